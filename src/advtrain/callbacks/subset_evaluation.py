"""The shared mechanism of the evaluation callbacks: a per-example test on a validation subset.

:class:`~advtrain.callbacks.RobustEvaluation` (robust under an attack) and
:class:`~advtrain.callbacks.CertifiedEvaluation` (verified by bounds) differ only in the test they
apply to each example; choosing the epochs, the example budget per rank, summing across ranks,
logging and checkpointing the last value live here.
"""

from __future__ import annotations

import warnings
from abc import abstractmethod
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from advtrain.callbacks.batch import Key, split_batch
from advtrain.callbacks.inputs import InputSpace, NormalizationArg
from advtrain.lit.adapter import Callback
from advtrain.metrics.robust import RobustAccuracy
from advtrain.models.view import ForwardFn, OutputKey
from advtrain.normalization import AUTO
from advtrain.threat import OutOfBoundsError, ThreatModel
from advtrain.validation import check_positive_int

if TYPE_CHECKING:
    from lightning.pytorch import LightningModule, Trainer


def find_training_callback(trainer: Trainer) -> Callback | None:
    """The Trainer's adversarial-training callback: the first one with a ``final_threat`` method.

    (:class:`~advtrain.callbacks.AdversarialTraining`,
    :class:`~advtrain.callbacks.FreeAdversarialTraining`.)
    """
    for cb in trainer.callbacks:  # type: ignore[attr-defined]
        if callable(getattr(cb, "final_threat", None)):
            return cb  # type: ignore[no-any-return]
    return None


def training_threat(trainer: Trainer) -> ThreatModel | None:
    """The threat model the Trainer's adversarial-training callback ends training at, if any."""
    training = find_training_callback(trainer)
    return None if training is None else training.final_threat(trainer)  # type: ignore[attr-defined]


def training_space(trainer: Trainer) -> InputSpace | None:
    """How the Trainer's adversarial-training callback sees its inputs (normalisation, logits)."""
    return getattr(find_training_callback(trainer), "space", None)


class SubsetEvaluation(Callback):
    """Logs the fraction of the first ``n_examples`` validation examples that pass a test.

    The first and last validation epochs and every ``every_n_epochs``-th are evaluated; between
    evaluations the last value is logged again, so a ``ModelCheckpoint`` monitoring it always
    finds the key (ties never replace the best checkpoint, so a repeated value never wins).
    Under DDP each rank tests its own shard and the counts are summed across ranks.
    Passes are counted with :class:`~advtrain.metrics.RobustAccuracy`: an example that fails the
    test counts as predicted "no class" (``-1``), so the metric's sum states and its exact DDP
    synchronisation are the ones every other robust accuracy in advtrain uses.

    Inputs are tested in pixel units: data normalised in its transforms is un-normalised first
    (the normalisation found in the validation data or declared, else the training callback's)
    and the module is tested through a view that normalises its pixels
    (:mod:`advtrain.callbacks.inputs`).

    Args:
        every_n_epochs: Evaluate every k epochs (and at the first and last epoch).
        n_examples: Validation examples to test, in total across ranks.
        monitor: Name of the logged metric.
        input_key: Where the inputs are in a batch.
        target_key: Where the labels are.
        normalization: ``"auto"`` (found in the validation data pipeline or taken from the
            Trainer's adversarial-training callback), ``None`` (inputs are pixels) or
            ``(mean, std)``.
        output_key: Where the logits are in the module's output (dict key, tuple index).
        forward_fn: ``forward_fn(module, x) -> logits`` instead of ``module(x)``.
    """

    def __init__(
        self,
        every_n_epochs: int,
        n_examples: int,
        monitor: str,
        input_key: Key = 0,
        target_key: Key = 1,
        normalization: NormalizationArg = AUTO,
        output_key: OutputKey | None = None,
        forward_fn: ForwardFn | None = None,
    ) -> None:
        super().__init__()
        self.space = InputSpace(type(self).__name__, normalization, output_key, forward_fn)
        self._resolved = False
        self.every_n_epochs = check_positive_int(every_n_epochs, "every_n_epochs")
        self.n_examples = check_positive_int(n_examples, "n_examples")
        self.monitor = monitor
        self.input_key = input_key
        self.target_key = target_key
        self.last_value: float | None = None
        self._active = False
        self.metric = RobustAccuracy()
        self._tested = 0  # examples tested on this rank in this epoch (the budget, host-side)
        self.first_id = 0  # the id of the first example of the batch being tested

    @abstractmethod
    def passes(self, trainer: Trainer, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """Per-example boolean: example ``(x, y)`` passes the test (e.g. robust, verified).

        ``model`` is the module's pixel-space view and ``x`` the examples in pixel units.
        """

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._resolved = False

    def start(self, trainer: Trainer) -> None:
        """Called at the start of each evaluated validation epoch (e.g. to re-seed an attack)."""

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        epoch = trainer.current_epoch
        last = trainer.max_epochs is not None and epoch + 1 >= trainer.max_epochs
        self._active = not trainer.sanity_checking and (
            (epoch + 1) % self.every_n_epochs == 0 or last or self.last_value is None
        )
        self.metric = self.metric.to(pl_module.device)
        self.metric.reset()
        self._tested = 0
        if self._active:
            if not self._resolved:
                fallback = getattr(training_space(trainer), "normalization", None)
                self.space.resolve(trainer, "val", fallback=fallback)
                self._resolved = True
            self.start(trainer)

    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not self._active or dataloader_idx != 0:
            return
        per_rank = self.n_examples // max(trainer.world_size, 1)
        budget = per_rank - self._tested
        if budget <= 0:
            return
        x, y = split_batch(batch, self.input_key, self.target_key)
        x, y = x[:budget], y[:budget]
        # Stable example ids across epochs and ranks: the attack's per-example random streams
        # (advtrain.randomness) then make every evaluation of the same weights identical.
        self.first_id = trainer.global_rank * per_rank + self._tested
        try:
            ok = self.passes(trainer, self.space.view(pl_module), self.space.to_pixels(x), y)
        except OutOfBoundsError as err:
            raise self.space.explain(err, x) from None
        self._tested += int(y.numel())
        y = y.to(self.metric.device)
        self.metric.update(torch.where(ok.to(y.device), y, torch.full_like(y, -1)), y)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        if self._active:
            # Sum states, synchronised across ranks by torchmetrics when distributed (every
            # rank computes, also one whose shard gave no example).
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*was called before the ``update``")
                value = float(self.metric.compute())
            if value == value:  # nan: no example was tested
                self.last_value = value
        if self.last_value is not None:
            # Already summed across ranks: every rank logs the same value.
            pl_module.log(self.monitor, self.last_value, prog_bar=True, sync_dist=True)

    @property
    def state_key(self) -> str:
        """The checkpoint key: the class name and the monitored metric, so several evaluations
        of one class (e.g. two ``RobustEvaluation`` at different eps, each with its own
        ``monitor``) can share a Trainer and each resume its own last value. Checkpoints
        written under the class name alone still load (Lightning's legacy key)."""
        return self._generate_state_key(monitor=self.monitor)

    def state_dict(self) -> dict[str, Any]:
        return {"last_value": self.last_value}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last_value = state_dict.get("last_value")
