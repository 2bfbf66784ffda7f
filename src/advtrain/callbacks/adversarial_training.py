"""``AdversarialTraining``: turns an unmodified LightningModule into an adversarially trained one.

The callback wraps the module's ``training_step`` for the duration of ``fit``. For every training
batch it finds the inputs and targets, generates adversarial examples on the fly with the
*unwrapped* module (never the DDP wrapper) and then either

* hands the user's own ``training_step`` the same batch with its inputs replaced (an attack,
  e.g. :class:`~advtrain.attacks.PGD` for Madry et al. 2018 PGD-AT or
  :class:`~advtrain.attacks.FGSM` with a random start for Wong et al. 2020 Fast-AT), or
* replaces the training loss by a loss wrapper such as
  :class:`~advtrain.losses.TRADESLoss` (``loss(module, x, y) -> (loss, logs)``), for methods whose
  objective is not "cross-entropy on perturbed inputs". The module's ``forward`` is then taken to
  be the classifier returning logits (checked on the first batch).

Attack and loss attributes (``eps``, ``alpha``, ``steps``, ``beta``, ``kappa``, ``sigma``…) follow
:mod:`advtrain.schedules` as functions of training progress and are logged as ``adv/<name>``.
They are logged per epoch too (the value at the epoch's last step), so every logger shows them
whatever ``log_every_n_steps`` is. Random starts are seeded per rank and per step from ``seed``, so
a resumed run draws the same perturbations at the same step and DDP ranks draw different ones.

Data normalised in its transforms (``Compose([ToTensor(), Normalize(mean, std)])``) keeps eps in
pixel units: the callback finds the torchvision ``Normalize`` in the data pipeline (or takes
``normalization=(mean, std)``), attacks the pixels ``x * std + mean`` in ``bounds`` through a view
of the module that normalises them, and hands the module normalised adversarial inputs
(:mod:`advtrain.callbacks.inputs`).

Note: a module's own ``train/acc`` is then its accuracy on adversarial inputs;
``clean_acc_examples`` adds ``adv/clean_acc``, the accuracy on each batch's first clean inputs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from advtrain.attacks.base import Attack
from advtrain.callbacks.batch import Key, replace_inputs, split_batch
from advtrain.callbacks.inputs import (
    InputSpace,
    NormalizationArg,
    warn_if_bounds_look_normalised,
)
from advtrain.callbacks.scheduling import (
    end_progress,
    resolve_attribute,
    schedulable_names,
    step_seed,
    training_progress,
)
from advtrain.callbacks.step_wrapper import unwrap_training_step, wrap_training_step
from advtrain.lit.adapter import Callback, MisconfigurationException
from advtrain.losses.base import TrainingLoss
from advtrain.models.view import ForwardFn, OutputKey
from advtrain.modes import model_state_guard
from advtrain.normalization import AUTO
from advtrain.schedules.base import Schedule
from advtrain.threat import OutOfBoundsError, ThreatModel
from advtrain.validation import check_positive_int

if TYPE_CHECKING:
    from lightning.pytorch import LightningModule, Trainer


class AdversarialTraining(Callback):
    """Adversarial training for an unmodified LightningModule, generated on the fly per batch.

    Example:
        >>> from advtrain.attacks import PGD
        >>> from advtrain.schedules import Linear
        >>> cb = AdversarialTraining(PGD(eps=8/255, steps=7),
        ...                          schedules={"eps": Linear(0.0, 8/255, ramp_epochs=10)})

    Args:
        attack: An :class:`~advtrain.attacks.Attack`; the user's ``training_step`` then sees
            adversarial inputs (PGD-AT, Fast-AT with ``FGSM(random_start=True)``).
        loss: Instead of ``attack``, a loss wrapper ``loss(module, x, y) -> (loss, logs)`` that
            replaces the module's training loss (TRADES, MART, IBP, Gaussian noise…). Requires
            the module's ``forward`` to return logits of shape ``(batch, classes)`` (or
            ``output_key``/``forward_fn`` to say where they are).
        schedules: Attribute name → :class:`~advtrain.schedules.Schedule`, applied to the attack
            (or the loss wrapper; a bare name missing there is looked up on its ``attack``).
        fraction: Fraction of each batch replaced by adversarial examples, in (0, 1]
            (attack mode only; the rest stays clean).
        input_key: Where the inputs are in a batch: an index for tuples/lists, a key for dicts.
        target_key: Where the integer class labels are.
        seed: Seed of the attack's random starts; ``None`` takes torch's initial seed at ``fit``
            (what ``seed_everything`` set). Each rank and step gets its own stream.
        log_prefix: Prefix of the logged scheduled values and loss logs.
        normalization: The normalisation the data applies: ``"auto"`` (default: a torchvision
            ``Normalize`` found in the training dataset's or the data module's transforms, else
            none), ``None`` (inputs are pixels in ``bounds``), or ``(mean, std)`` per channel.
            eps, alpha and the attack's ``bounds`` stay in pixel units.
        output_key: Where the logits are when ``forward`` returns a dict (a key) or a tuple (an
            index).
        forward_fn: ``forward_fn(module, x) -> logits``, for a module whose logits come from
            another call than ``module(x)``.
        clean_acc_examples: Log ``adv/clean_acc``, the accuracy on the first k clean inputs of
            each batch (one extra forward pass of k examples per step; 0 = off).
    """

    def __init__(
        self,
        attack: Attack | None = None,
        loss: TrainingLoss | None = None,
        schedules: Mapping[str, Schedule] | None = None,
        fraction: float = 1.0,
        input_key: Key = 0,
        target_key: Key = 1,
        seed: int | None = None,
        log_prefix: str = "adv/",
        normalization: NormalizationArg = AUTO,
        output_key: OutputKey | None = None,
        forward_fn: ForwardFn | None = None,
        clean_acc_examples: int = 0,
    ) -> None:
        super().__init__()
        if (attack is None) == (loss is None):
            raise MisconfigurationException(
                "AdversarialTraining needs exactly one of attack= (inputs replaced, your "
                "training_step unchanged) or loss= (a loss wrapper such as TRADESLoss)"
            )
        if attack is not None and not isinstance(attack, Attack):
            raise MisconfigurationException(
                f"attack must be an advtrain Attack (e.g. advtrain.attacks.PGD), got "
                f"{type(attack).__name__}"
            )
        if loss is not None and not callable(loss):
            raise MisconfigurationException(
                f"loss must be callable as loss(module, x, y) -> (loss, logs), got {loss!r}"
            )
        try:
            fraction = float(fraction)
            clean_acc_examples = check_positive_int(clean_acc_examples, "clean_acc_examples", 0)
        except (TypeError, ValueError) as err:
            raise MisconfigurationException(f"AdversarialTraining: {err}") from None
        if not 0.0 < fraction <= 1.0:
            raise MisconfigurationException(f"fraction must lie in (0, 1], got {fraction}")
        if loss is not None and fraction != 1.0:
            raise MisconfigurationException("fraction applies to attack= only, not to loss=")
        self.attack = attack
        self.loss = loss
        self.target: Any = attack if attack is not None else loss
        self.fraction = fraction
        self.input_key = input_key
        self.target_key = target_key
        self.seed = seed
        self.log_prefix = log_prefix
        self.clean_acc_examples = clean_acc_examples
        self.space = InputSpace("AdversarialTraining", normalization, output_key, forward_fn)
        self.schedules: dict[str, Schedule] = {}
        for name, schedule in dict(schedules or {}).items():
            if not isinstance(schedule, Schedule):
                raise MisconfigurationException(
                    f"schedules[{name!r}] must be an advtrain.schedules.Schedule, got "
                    f"{type(schedule).__name__}"
                )
            try:
                resolve_attribute(self.target, str(name))
            except AttributeError:
                raise MisconfigurationException(
                    f"schedules names {name!r}, which {type(self.target).__name__} does not have; "
                    f"schedulable attributes: {schedulable_names(self.target)}"
                ) from None
            self.schedules[str(name)] = schedule
        self._original_step: Any = None
        self._module: LightningModule | None = None
        self._checked_output = False
        self._seed_value = 0
        self._values: dict[str, float] = {}  # the scheduled values of the last step
        self._epoch_logs: dict[str, list[Any]] = {}  # logs of this epoch, reduced at its end
        self._restored_normalization: Any = None

    @property
    def normalization(self) -> Any:
        """The normalisation in use this ``fit`` (``None``: the inputs are pixels)."""
        return self.space.normalization

    # -- lifecycle ------------------------------------------------------------------------------
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._seed_value = int(self.seed) if self.seed is not None else torch.initial_seed()
        self._original_step = wrap_training_step(pl_module, self._training_step)
        self._module = pl_module
        self._checked_output = False
        threat = self.final_threat()
        if threat is not None:
            warn_if_bounds_look_normalised("AdversarialTraining", threat.bounds)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        found = self.space.resolve(trainer, "train")
        described = self.space.describe()
        restored, self._restored_normalization = self._restored_normalization, None
        if restored is not None and restored["value"] != described:
            raise MisconfigurationException(
                "AdversarialTraining: the checkpoint was trained with normalization "
                f"{restored['value']} "
                f"but this run's data is normalised as {described}; resume on the same data "
                "pipeline or declare normalization= as before"
            )
        if found is not None:
            for logger in trainer.loggers:
                logger.log_hyperparams({"advtrain/normalization": described})

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit" and self._original_step is not None:
            unwrap_training_step(pl_module)
            self._original_step = None
            self._module = None

    # -- per batch ------------------------------------------------------------------------------
    def _apply_schedules(self, trainer: Trainer, batch_idx: int) -> dict[str, float]:
        values: dict[str, float] = {}
        if not self.schedules:
            return values
        progress = training_progress(trainer, batch_idx)
        for name, schedule in self.schedules.items():
            owner, attr = resolve_attribute(self.target, name)
            value = schedule(progress)
            current = getattr(owner, attr)
            if isinstance(current, int) and not isinstance(current, bool):
                value = round(value)
            setattr(owner, attr, value)
            values[name] = float(value)
        return values

    def _reseed(self, trainer: Trainer, batch_idx: int) -> int:
        """Reseeds the attack (and a loss wrapper) for this step; returns the step's seed."""
        seed = step_seed(self._seed_value, trainer.global_rank, trainer.global_step, batch_idx)
        for obj in (self.target, getattr(self.target, "attack", None)):
            if isinstance(obj, Attack):
                obj.reseed(seed)
        if hasattr(self.target, "reseed") and not isinstance(self.target, Attack):
            self.target.reseed(seed)
        return seed

    def _keep(self, name: str, value: Any) -> None:
        """Keeps a per-step log value for the epoch's mean (one ``log`` call per epoch)."""
        if isinstance(value, Tensor) and value.requires_grad:
            value = value.detach()
        self._epoch_logs.setdefault(name, []).append(value)

    def _run(self, fn: Any, x: Tensor, *args: Any) -> Any:
        """``fn(*args)`` (an attack or loss call), its input complaints explained."""
        try:
            return fn(*args)
        except OutOfBoundsError as err:
            raise self.space.explain(err, x) from None

    def _training_step(self, batch: Any, batch_idx: int, *args: Any, **kwargs: Any) -> Any:
        module = self._module
        assert module is not None and self._original_step is not None
        trainer = module.trainer
        x, y = split_batch(batch, self.input_key, self.target_key)
        values = self._apply_schedules(trainer, batch_idx)
        seed = self._reseed(trainer, batch_idx)
        view = self.space.view(module)
        x_pix = self.space.to_pixels(x)
        if not self._checked_output:
            self.space.check_classifier(module, x_pix, y)
            self._checked_output = True
        # Lightning's log() costs about as much as a small model's forward pass, so scheduled
        # values are logged at the logger's own cadence (every log_every_n_steps), where the
        # logger records them anyway, and at the first batch of each epoch; the epoch's end logs
        # the last value again at epoch level.
        self._values = values
        if batch_idx == 0 or trainer.global_step % max(trainer.log_every_n_steps, 1) == 0:
            for name, value in values.items():
                module.log(self.log_prefix + name, value, on_step=True, on_epoch=False)
        if self.loss is not None:
            loss, logs = self._run(self.loss, x, view, x_pix, y)
            for name, value in (logs or {}).items():
                if name not in values:  # scheduled values are logged above
                    self._keep(name, value)
            return loss
        if self.clean_acc_examples:
            k = min(self.clean_acc_examples, x_pix.shape[0])
            with torch.no_grad(), model_state_guard(view, "eval"):
                correct = view(x_pix[:k]).argmax(dim=1) == y[:k]
            self._keep("clean_acc", correct.float().mean())
        if self.fraction < 1.0:
            k = max(1, round(self.fraction * x.shape[0]))
            gen = torch.Generator().manual_seed(seed)  # which examples: the step's own stream
            idx = torch.randperm(x.shape[0], generator=gen)[:k].to(x.device)
            x_adv = x_pix.clone()
            x_adv[idx] = self._run(self.attack, x, view, x_pix[idx], y[idx])
        else:
            x_adv = self._run(self.attack, x, view, x_pix, y)
        x_new = self.space.to_inputs(x_adv)
        return self._original_step(
            replace_inputs(batch, self.input_key, x_new), batch_idx, *args, **kwargs
        )

    def final_threat(self, trainer: Trainer | None = None) -> ThreatModel | None:
        """The threat model training ends at: the scheduled ``eps`` at the end of the run.

        Looked up on the attack, a loss wrapper's inner ``attack``, or a loss wrapper with its own
        ``eps``/``norm``/``bounds`` (IBP, CROWN-IBP); a certified-training loss that trains at a
        larger radius (``eps_train_factor``, e.g. 1.1) reports the test radius. Returns ``None``
        when none of them has a threat model (e.g. Gaussian-noise training). In pixel units
        (normalised data is attacked in pixels).
        """
        threat = getattr(self.target, "threat", None)
        if threat is None:
            threat = getattr(getattr(self.target, "attack", None), "threat", None)
        if threat is None and all(hasattr(self.target, a) for a in ("eps", "norm", "bounds")):
            threat = ThreatModel(
                norm=self.target.norm, eps=self.target.eps, bounds=self.target.bounds
            )
        if threat is None:
            return None
        eps = threat.eps
        for name, schedule in self.schedules.items():
            if name.split(".")[-1] == "eps":
                eps = schedule.value_at(end_progress(trainer).in_unit(schedule.unit))
        eps /= float(getattr(self.target, "eps_train_factor", 1.0) or 1.0)
        return ThreatModel(norm=threat.norm, eps=eps, bounds=threat.bounds)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Every scheduled value once per epoch (the value of the epoch's last step), so it shows
        # in every logger whatever log_every_n_steps is; the loss logs as their epoch mean.
        for name, value in self._values.items():
            pl_module.log(
                self.log_prefix + name, value, on_step=False, on_epoch=True, sync_dist=True
            )
        for name, values in self._epoch_logs.items():
            mean = torch.stack([torch.as_tensor(v, dtype=torch.float32) for v in values]).mean()
            pl_module.log(
                self.log_prefix + name, mean, on_step=False, on_epoch=True, sync_dist=True
            )
        self._epoch_logs = {}

    # -- checkpointing --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "schedules": {name: s.state_dict() for name, s in self.schedules.items()},
            "seed": self._seed_value,
            "normalization": self.space.describe(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("schedules", {})
        if set(saved) != set(self.schedules):
            raise MisconfigurationException(
                f"the checkpoint schedules {sorted(saved)} but this run schedules "
                f"{sorted(self.schedules)}; resume with the same configuration"
            )
        for name, state in saved.items():
            try:
                self.schedules[name].load_state_dict(state)
            except ValueError as err:
                raise MisconfigurationException(str(err)) from None
        if self.seed is None and "seed" in state_dict:
            # setup() ran before this restore; keep the original run's seed stream.
            self._seed_value = int(state_dict["seed"])
        if "normalization" in state_dict:  # checked against this run's data at on_train_start
            self._restored_normalization = {"value": state_dict["normalization"]}
