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
Random starts are seeded per rank and per step from ``seed``, so a resumed run draws the same
perturbations at the same step and DDP ranks draw different ones.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.exceptions import MisconfigurationException
from torch import Tensor

from advtrain.attacks.base import Attack, model_state_guard
from advtrain.callbacks.batch import Key, replace_inputs, split_batch
from advtrain.callbacks.step_wrapper import unwrap_training_step, wrap_training_step
from advtrain.schedules.base import Progress, Schedule
from advtrain.threat import ThreatModel


def training_progress(trainer: pl.Trainer, batch_idx: int) -> Progress:
    """The current :class:`Progress` of ``trainer`` at ``batch_idx`` of the running epoch."""
    n_batches = trainer.num_training_batches
    if not isinstance(n_batches, (int, float)) or n_batches in (0, float("inf")):
        n_batches = max(batch_idx + 1, 1)
    epoch = trainer.current_epoch + batch_idx / n_batches
    if trainer.max_epochs is not None and trainer.max_epochs > 0:
        fraction = epoch / trainer.max_epochs
    elif trainer.max_steps and trainer.max_steps > 0:
        fraction = trainer.global_step / trainer.max_steps
    else:
        fraction = 0.0
    return Progress(step=trainer.global_step, epoch=epoch, fraction=min(max(fraction, 0.0), 1.0))


def step_seed(seed: int, rank: int, step: int, batch_idx: int) -> int:
    """A 63-bit seed unique to ``(seed, rank, step, batch)``; independent streams per rank."""
    digest = hashlib.blake2b(f"{seed}:{rank}:{step}:{batch_idx}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "little") >> 1


def _resolve_attribute(target: Any, name: str) -> tuple[Any, str]:
    """Finds the object that owns attribute ``name`` (dotted paths allowed).

    A bare name missing on ``target`` is looked up on ``target.attack`` (a loss wrapper's inner
    attack), so ``{"eps": ...}`` drives TRADES's inner attack.
    """
    parts = name.split(".")
    obj = target
    for part in parts[:-1]:
        obj = getattr(obj, part)
    attr = parts[-1]
    if not hasattr(obj, attr) and len(parts) == 1 and hasattr(obj, "attack"):
        obj = obj.attack
    if not hasattr(obj, attr):
        raise AttributeError(attr)
    return obj, attr


def _schedulable_names(target: Any) -> list[str]:
    names = {
        n
        for n in dir(target)
        if not n.startswith("_") and isinstance(getattr(target, n, None), (int, float))
    }
    inner = getattr(target, "attack", None)
    if isinstance(inner, Attack):
        names |= {f"attack.{n}" for n in _schedulable_names(inner)}
    return sorted(n for n in names if not isinstance(getattr(target, n, None), bool))


class AdversarialTraining(pl.Callback):
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
            the module's ``forward`` to return logits of shape ``(batch, classes)``.
        schedules: Attribute name → :class:`~advtrain.schedules.Schedule`, applied to the attack
            (or the loss wrapper; a bare name missing there is looked up on its ``attack``).
        fraction: Fraction of each batch replaced by adversarial examples, in (0, 1]
            (attack mode only; the rest stays clean).
        input_key: Where the inputs are in a batch: an index for tuples/lists, a key for dicts.
        target_key: Where the integer class labels are.
        seed: Seed of the attack's random starts; ``None`` takes torch's initial seed at ``fit``
            (what ``seed_everything`` set). Each rank and step gets its own stream.
        log_prefix: Prefix of the logged scheduled values and loss logs.
    """

    def __init__(
        self,
        attack: Attack | None = None,
        loss: Any = None,
        schedules: Mapping[str, Schedule] | None = None,
        fraction: float = 1.0,
        input_key: Key = 0,
        target_key: Key = 1,
        seed: int | None = None,
        log_prefix: str = "adv/",
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
        except (TypeError, ValueError):
            raise MisconfigurationException(
                f"fraction must be a number, got {fraction!r}"
            ) from None
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
        self.schedules: dict[str, Schedule] = {}
        for name, schedule in dict(schedules or {}).items():
            if not isinstance(schedule, Schedule):
                raise MisconfigurationException(
                    f"schedules[{name!r}] must be an advtrain.schedules.Schedule, got "
                    f"{type(schedule).__name__}"
                )
            try:
                _resolve_attribute(self.target, str(name))
            except AttributeError:
                raise MisconfigurationException(
                    f"schedules names {name!r}, which {type(self.target).__name__} does not have; "
                    f"schedulable attributes: {_schedulable_names(self.target)}"
                ) from None
            self.schedules[str(name)] = schedule
        self._original_step: Any = None
        self._module: pl.LightningModule | None = None
        self._checked_output = False
        self._seed_value = 0
        self._epoch_logs: dict[str, list[Any]] = {}  # the loss wrapper's logs of this epoch

    # -- lifecycle ------------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._seed_value = int(self.seed) if self.seed is not None else torch.initial_seed()
        self._original_step = wrap_training_step(pl_module, self._training_step)
        self._module = pl_module

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and self._original_step is not None:
            unwrap_training_step(pl_module)
            self._original_step = None
            self._module = None

    # -- per batch ------------------------------------------------------------------------------
    def _apply_schedules(self, trainer: pl.Trainer, batch_idx: int) -> dict[str, float]:
        values: dict[str, float] = {}
        if not self.schedules:
            return values
        progress = training_progress(trainer, batch_idx)
        for name, schedule in self.schedules.items():
            owner, attr = _resolve_attribute(self.target, name)
            value = schedule(progress)
            current = getattr(owner, attr)
            if isinstance(current, int) and not isinstance(current, bool):
                value = round(value)
            setattr(owner, attr, value)
            values[name] = float(value)
        return values

    def _reseed(self, trainer: pl.Trainer, batch_idx: int) -> int:
        """Reseeds the attack (and a loss wrapper) for this step; returns the step's seed."""
        seed = step_seed(self._seed_value, trainer.global_rank, trainer.global_step, batch_idx)
        for obj in (self.target, getattr(self.target, "attack", None)):
            if isinstance(obj, Attack):
                obj.reseed(seed)
        if hasattr(self.target, "reseed") and not isinstance(self.target, Attack):
            self.target.reseed(seed)
        return seed

    def _check_output(self, module: pl.LightningModule, x: Tensor) -> None:
        if self._checked_output:
            return
        with torch.no_grad(), model_state_guard(module, "eval"):
            out = module(x[:2])
        if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[0] != min(2, x.shape[0]):
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise MisconfigurationException(
                f"AdversarialTraining needs the module's forward to return logits of shape "
                f"(batch, classes); it returned {shape}. Make forward(x) return the classifier's "
                "logits (and keep any other outputs out of forward)"
            )
        self._checked_output = True

    def _training_step(self, batch: Any, batch_idx: int, *args: Any, **kwargs: Any) -> Any:
        module = self._module
        assert module is not None and self._original_step is not None
        trainer = module.trainer
        x, y = split_batch(batch, self.input_key, self.target_key)
        values = self._apply_schedules(trainer, batch_idx)
        seed = self._reseed(trainer, batch_idx)
        self._check_output(module, x)
        # Lightning's log() costs about as much as a small model's forward pass, so scheduled
        # values are logged at the logger's own cadence (every log_every_n_steps), where the
        # logger records them anyway, and at the first batch of each epoch.
        if batch_idx == 0 or trainer.global_step % max(trainer.log_every_n_steps, 1) == 0:
            for name, value in values.items():
                module.log(self.log_prefix + name, value, on_step=True, on_epoch=False)
        if self.loss is not None:
            loss, logs = self.loss(module, x, y)
            # Accumulated here and logged once per epoch (their mean over the epoch's batches):
            # a log() call per value and step would cost more than the loss itself on small models.
            for name, value in (logs or {}).items():
                if name in values:  # a scheduled value, already logged per step above
                    continue
                if isinstance(value, Tensor) and value.requires_grad:
                    value = value.detach()
                self._epoch_logs.setdefault(name, []).append(value)  # reduced at the epoch's end
            return loss
        if self.fraction < 1.0:
            k = max(1, round(self.fraction * x.shape[0]))
            gen = torch.Generator().manual_seed(seed)  # which examples: the step's own stream
            idx = torch.randperm(x.shape[0], generator=gen)[:k].to(x.device)
            x_new = x.clone()
            x_new[idx] = self.attack(module, x[idx], y[idx])  # type: ignore[misc]
        else:
            x_new = self.attack(module, x, y)  # type: ignore[misc]
        return self._original_step(
            replace_inputs(batch, self.input_key, x_new), batch_idx, *args, **kwargs
        )

    def final_threat(self, trainer: pl.Trainer | None = None) -> ThreatModel | None:
        """The threat model training ends at: the scheduled ``eps`` at the end of the run.

        Looked up on the attack, a loss wrapper's inner ``attack``, or a loss wrapper with its own
        ``eps``/``norm``/``bounds`` (IBP, CROWN-IBP); a certified-training loss that trains at a
        larger radius (``eps_train_factor``, e.g. 1.1) reports the test radius. Returns ``None``
        when none of them has a threat model (e.g. Gaussian-noise training).
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
                end = Progress(fraction=1.0)
                if trainer is not None:
                    steps = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else 0
                    if not steps:
                        try:
                            steps = int(trainer.estimated_stepping_batches)
                        except Exception:
                            steps = 0
                    end = Progress(step=steps, epoch=float(trainer.max_epochs or 0), fraction=1.0)
                eps = schedule.value_at(end.in_unit(schedule.unit))
        eps /= float(getattr(self.target, "eps_train_factor", 1.0) or 1.0)
        return ThreatModel(norm=threat.norm, eps=eps, bounds=threat.bounds)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
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
