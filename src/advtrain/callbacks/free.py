"""``FreeAdversarialTraining``: adversarial training at the cost of natural training.

Shafahi, Najibi, Ghiasi, Xu, Dickerson, Studer, Davis, Taylor & Goldstein, "Adversarial Training
for Free!", NeurIPS 2019. Every minibatch is replayed ``m`` times in a row; each replay trains on
``x + delta`` and its single backward pass yields both the parameter gradient (the optimizer takes
a step) and the input gradient, which updates the perturbation
``delta <- clip(delta + eps·sign(grad_x), -eps, eps)``. ``delta`` is carried over from replay to
replay and from one minibatch to the next. Since each minibatch is seen ``m`` times, the number of
epochs is divided by ``m`` to keep the cost of natural training (paper: m=8 on CIFAR-10, eps
8/255, step eps; 85.96% clean / 46.33% PGD-20).

Lightning mechanics (automatic optimization, unmodified LightningModule):

* the training loader is wrapped so that it yields each batch ``m`` times; every replay is an
  ordinary Lightning training step (optimizer step, schedulers, logging, gradient accumulation,
  DDP and its distributed sampler all work unchanged), and an epoch has ``m`` times as many steps;
* the wrapped ``training_step`` hands the user's own ``training_step`` the batch with its inputs
  replaced by ``x + delta`` (clipped to the input box), a fresh leaf tensor that requires grad;
* after the step's backward pass, ``on_train_batch_end`` reads that tensor's ``.grad`` and
  updates ``delta``.

With ``replay_in_step=True`` the ``m`` replays run inside one Lightning step instead: the module's
``optimizer_step`` hook is wrapped to run Lightning's own optimizer step (closure: training step,
backward, precision plugin, optimizer) ``m`` times, and ``delta`` is updated in
``on_after_backward``. Lightning's loop then runs once per minibatch rather than once per replay,
which is what a hand-written Free-AT ``training_step`` with manual optimization costs; the price is
that ``trainer.global_step``, step-interval learning-rate schedulers, ``max_steps`` and on-step logs
count minibatches (each of which takes ``m`` optimizer steps), and that gradient accumulation is not
supported (Lightning calls ``optimizer_step`` only at accumulation boundaries).
"""

from __future__ import annotations

import math
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import CombinedLoader
from pytorch_lightning.utilities.exceptions import MisconfigurationException
from pytorch_lightning.utilities.rank_zero import rank_zero_info
from torch import Tensor

from advtrain.attacks.base import check_positive_int
from advtrain.callbacks.batch import Key, replace_inputs, split_batch
from advtrain.callbacks.step_wrapper import (
    check_not_wrapped,
    unwrap_training_step,
    wrap_training_step,
)
from advtrain.threat import ThreatModel, check_input_batch

FREE_NORMS: tuple[str, ...] = ("linf", "l2")


class ReplayLoader(CombinedLoader):
    """A :class:`~pytorch_lightning.utilities.CombinedLoader` that yields every batch ``replays``
    times in a row.

    Lightning still sees (and prepares: distributed sampler, worker seeding, epoch setting) the
    user's own loaders, which this object combines exactly as a plain ``CombinedLoader`` would;
    only the iteration repeats each combined batch. ``limit_train_batches`` therefore counts
    distinct minibatches, and the number of steps of an epoch is ``replays`` times that.
    """

    def __init__(self, iterables: Any, replays: int, mode: str = "max_size_cycle") -> None:
        super().__init__(iterables, mode)  # type: ignore[arg-type]
        self.replays = check_positive_int(replays, "replays")
        self._current: Any = None
        self._left = 0

    @classmethod
    def wrap(cls, loader: Any, replays: int) -> ReplayLoader:
        """Wraps what a ``train_dataloader`` returned (a loader, a collection, a CombinedLoader)."""
        if isinstance(loader, ReplayLoader):
            return loader
        if isinstance(loader, CombinedLoader):
            return cls(loader.iterables, replays, getattr(loader, "_mode", "max_size_cycle"))
        return cls(loader, replays)

    def __iter__(self) -> ReplayLoader:
        super().__iter__()
        self._current = None
        self._left = 0
        return self

    def __next__(self) -> Any:
        if self._left == 0:
            self._current = super().__next__()
            self._left = self.replays
        self._left -= 1
        return self._current

    def __len__(self) -> int:
        return super().__len__() * self.replays


class FreeAdversarialTraining(pl.Callback):
    """Free adversarial training ("Adversarial Training for Free!", Shafahi et al., NeurIPS 2019).

    Works with an unmodified LightningModule whose ``training_step`` computes its loss from the
    batch's inputs (so the input gradient exists after backward). Divide the number of epochs by
    ``replays`` to keep natural training's cost (the paper's rule; ``divide_max_epochs=True``
    does it for you), e.g. ``max_epochs = budget / m``.

    Example:
        >>> cb = FreeAdversarialTraining(eps=8 / 255, replays=8)  # the paper's CIFAR-10 setting
        >>> # pl.Trainer(max_epochs=205 // 8, callbacks=[cb]).fit(module, datamodule)

    Args:
        eps: Radius of the perturbation ball, in input units (paper: 8/255 on CIFAR-10).
        replays: How many times each minibatch is replayed, ``m`` (paper: 8 on CIFAR-10;
            4 is a common choice on smaller problems).
        norm: ``"linf"`` (the paper: sign steps, delta clipped to the cube) or ``"l2"``
            (normalised steps, delta projected onto the ball).
        bounds: ``(low, high)`` of valid inputs; the trained input ``x + delta`` is clipped to it
            (``delta`` itself only to the ball, as in the paper).
        step_size: Step of the ``delta`` update; default ``eps`` (the paper).
        input_key: Where the inputs are in a batch: an index for tuples/lists, a key for dicts.
        target_key: Where the labels are (only checked for presence; the user's step uses them).
        divide_max_epochs: Divide the Trainer's ``max_epochs`` by ``replays`` (rounded up) at the
            start of ``fit``, so a configuration written for natural or PGD training keeps its
            budget of gradient steps. Off by default: pass ``max_epochs = budget / m`` yourself.
        replay_in_step: Run the ``m`` replays of a minibatch inside one Lightning step (see the
            module docstring): the same optimizer steps and perturbation updates, without
            Lightning's per-step loop ``m`` times per minibatch; ``global_step`` then counts
            minibatches. Needs automatic optimization and ``accumulate_grad_batches=1``.

    Raises:
        MisconfigurationException: On a bad argument, another callback already wrapping the
            training step, or a training step whose loss does not depend on the inputs.
    """

    def __init__(
        self,
        eps: float = 8 / 255,
        replays: int = 4,
        norm: str = "linf",
        bounds: tuple[float, float] = (0.0, 1.0),
        step_size: float | None = None,
        input_key: Key = 0,
        target_key: Key = 1,
        divide_max_epochs: bool = False,
        replay_in_step: bool = False,
    ) -> None:
        super().__init__()
        try:
            if isinstance(norm, str) and norm.lower() not in FREE_NORMS:
                raise ValueError(f"norm must be one of {list(FREE_NORMS)}, got {norm!r}")
            self.threat = ThreatModel(norm=norm, eps=eps, bounds=tuple(bounds))  # type: ignore[arg-type]
            self.replays = check_positive_int(replays, "replays")
            if step_size is not None:
                step_size = float(step_size)
                if not step_size > 0 or not math.isfinite(step_size):
                    raise ValueError(f"step_size must be a finite number > 0, got {step_size}")
        except (TypeError, ValueError) as err:
            raise MisconfigurationException(f"FreeAdversarialTraining: {err}") from None
        self._step_size = step_size
        self.input_key = input_key
        self.target_key = target_key
        self.divide_max_epochs = bool(divide_max_epochs)
        self.replay_in_step = bool(replay_in_step)
        self._original_optimizer_step: Any = None
        self._delta: Tensor | None = None
        self._x_adv: Tensor | None = None
        self._original_step: Any = None
        self._module: pl.LightningModule | None = None
        self._source: Any = None
        self._checked_inputs = False
        self._divided: tuple[int, int] | None = None  # (id(trainer), max_epochs after division)

    @property
    def eps(self) -> float:
        """Radius of the ball."""
        return self.threat.eps

    @property
    def norm(self) -> str:
        """The threat model's norm."""
        return self.threat.norm

    @property
    def step_size(self) -> float:
        """Step of the ``delta`` update (``eps`` unless set)."""
        return self._step_size if self._step_size is not None else self.threat.eps

    @property
    def delta(self) -> Tensor | None:
        """The carried perturbation (a copy), ``None`` before the first step."""
        return None if self._delta is None else self._delta.detach().clone()

    def final_threat(self, trainer: pl.Trainer | None = None) -> ThreatModel:
        """The threat model trained against (for evaluation callbacks)."""
        return self.threat

    # -- lifecycle ------------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        check_not_wrapped(pl_module)  # before the data source is patched
        source = getattr(getattr(trainer, "fit_loop", None), "_data_source", None)
        if source is None or not callable(getattr(source, "dataloader", None)):
            raise MisconfigurationException(
                "FreeAdversarialTraining could not find the Trainer's training data source; "
                "this version of Lightning is not supported"
            )
        if self.replay_in_step:
            self._check_in_step(trainer, pl_module)
        else:
            replays = self.replays
            original_dataloader = source.dataloader

            def dataloader() -> Any:
                return ReplayLoader.wrap(original_dataloader(), replays)

            source.dataloader = dataloader
            self._source = source

        self._original_step = wrap_training_step(pl_module, self._training_step)
        self._module = pl_module
        if self.replay_in_step:
            original = pl_module.optimizer_step
            self._original_optimizer_step = original
            replays = self.replays

            def optimizer_step(*args: Any, **kwargs: Any) -> Any:
                # Lightning's closure runs training_step and backward; each call is one replay.
                out = None
                for _ in range(replays):
                    out = original(*args, **kwargs)
                return out

            pl_module.optimizer_step = optimizer_step  # type: ignore[method-assign]

        if self.divide_max_epochs:
            self._divide_max_epochs(trainer)

    @staticmethod
    def _check_in_step(trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not pl_module.automatic_optimization:
            raise MisconfigurationException(
                "FreeAdversarialTraining(replay_in_step=True) replays inside Lightning's automatic "
                "optimizer step; this module uses manual optimization: use replay_in_step=False"
            )
        if trainer.accumulate_grad_batches != 1:
            raise MisconfigurationException(
                "FreeAdversarialTraining(replay_in_step=True) cannot be combined with "
                f"accumulate_grad_batches={trainer.accumulate_grad_batches} (Lightning steps the "
                "optimizer only at accumulation boundaries): use replay_in_step=False"
            )

    def _divide_max_epochs(self, trainer: pl.Trainer) -> None:
        current = trainer.fit_loop.max_epochs
        if current is None or current <= 0:
            return
        if self._divided is not None and self._divided == (id(trainer), current):
            return  # this Trainer's epochs are already divided (a second fit)
        divided = max(1, math.ceil(current / self.replays))
        trainer.fit_loop.max_epochs = divided
        self._divided = (id(trainer), divided)
        rank_zero_info(
            f"FreeAdversarialTraining: max_epochs {current} -> {divided} (each batch is replayed "
            f"{self.replays} times)"
        )

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if self._original_step is not None:
            unwrap_training_step(pl_module)
        if self._original_optimizer_step is not None and "optimizer_step" in vars(pl_module):
            del pl_module.optimizer_step
        self._original_optimizer_step = None
        if self._source is not None and "dataloader" in vars(self._source):
            del self._source.dataloader
        self._original_step = None
        self._module = None
        self._source = None
        self._x_adv = None

    # -- per step -------------------------------------------------------------------------------
    def _current_delta(self, x: Tensor) -> Tensor:
        """The carried perturbation for a batch like ``x`` (resized if the batch size changed)."""
        delta = self._delta
        if delta is None or delta.shape[1:] != x.shape[1:]:
            delta = torch.zeros_like(x, dtype=torch.float32)
        delta = delta.to(x.device)
        if delta.shape[0] < x.shape[0]:  # a larger batch: new rows start at zero
            pad = torch.zeros((x.shape[0] - delta.shape[0], *x.shape[1:]), device=x.device)
            delta = torch.cat([delta, pad.to(delta.dtype)])
        self._delta = delta
        return delta[: x.shape[0]]

    def _training_step(self, batch: Any, batch_idx: int, *args: Any, **kwargs: Any) -> Any:
        module = self._module
        assert module is not None and self._original_step is not None
        x, _ = split_batch(batch, self.input_key, self.target_key)
        if not self._checked_inputs:
            try:
                check_input_batch(x, self.threat.bounds)
            except (TypeError, ValueError) as err:
                raise MisconfigurationException(f"FreeAdversarialTraining: {err}") from None
            self._checked_inputs = True
        # No autograd graph is built here (neither x.detach() nor delta requires grad). delta is
        # kept inside the ball by its update, so only the box remains to enforce.
        delta = self._current_delta(x)
        low, high = self.threat.bounds
        x_adv = (x.detach() + delta.to(x.dtype)).clamp_(low, high).requires_grad_(True)
        self._x_adv = x_adv
        return self._original_step(
            replace_inputs(batch, self.input_key, x_adv), batch_idx, *args, **kwargs
        )

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if not self.replay_in_step:
            self._update_delta(skipped=outputs is None)
        self._x_adv = None

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.replay_in_step:  # one backward per replay, inside the Lightning step
            self._update_delta(skipped=False)

    def _update_delta(self, skipped: bool) -> None:
        """``delta`` takes one step along the input gradient of the replay just run."""
        x_adv, self._x_adv = self._x_adv, None
        if x_adv is None or self._delta is None:
            return
        grad = x_adv.grad
        if grad is None:
            if skipped:
                return  # the step was skipped (training_step returned None)
            raise MisconfigurationException(
                "FreeAdversarialTraining found no gradient on the inputs after the backward "
                "pass: training_step must compute its loss from the batch's inputs "
                f"(at {self.input_key!r}) without detaching them or running under no_grad"
            )
        # Plain tensor arithmetic on tensors that do not require grad (no autograd graph).
        n = grad.shape[0]
        delta = self._delta[:n]
        g = grad.detach().to(delta.dtype)
        moved = self._into_ball(
            torch.add(delta, self.threat.ascent_direction(g), alpha=self.step_size)
        )
        # An example whose input gradient is not finite keeps its perturbation: under float16 (a
        # GradScaler's overflow step, which also skips the optimizer step) or a diverging loss,
        # the gradient says nothing about where the loss rises. One reduction per example finds
        # them: a NaN or an inf anywhere makes the example's sum, times 0, NaN (not 0).
        finite = g.flatten(1).sum(dim=1).mul_(0).eq(0).view(-1, *([1] * (g.dim() - 1)))
        torch.where(finite, moved, delta, out=delta)

    def _into_ball(self, delta: Tensor) -> Tensor:
        """``delta`` clipped to the cube (linf) or scaled into the ball (l2) of radius eps."""
        if self.threat.norm == "linf":
            return delta.clamp(-self.eps, self.eps)
        norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
        factor = (self.eps / norms).clamp(max=1.0)
        return delta * factor.view(-1, *([1] * (delta.dim() - 1)))

    # -- checkpointing --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"delta": None if self._delta is None else self._delta.detach().cpu().clone()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        delta = state_dict.get("delta")
        # into this callback's ball: the training inputs x + delta are only clipped to the box
        self._delta = None if delta is None else self._into_ball(delta.float())


__all__ = ["FreeAdversarialTraining", "ReplayLoader"]
