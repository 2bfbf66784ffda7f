"""``CatastrophicOverfittingGuard``: detects the collapse of single-step adversarial training.

Wong, Rice & Kolter, "Fast is better than free: Revisiting adversarial training", ICLR 2020:
FGSM training with a random start (Fast-AT) is as robust as PGD training, but with too large a
step (or too long a run) it suddenly *catastrophically overfits*: within a few hundred steps the
accuracy under PGD falls to about zero while the accuracy under FGSM rises. Their remedy is
early stopping on a PGD check of a training minibatch each epoch: when PGD accuracy falls by
more than 0.2 against the previous check, stop and keep the previous model.

This callback automates that remedy for any Lightning run: it measures PGD accuracy on a fixed set
of training examples every ``every_n_epochs`` epochs (or every ``every_n_steps`` optimizer steps);
when the accuracy collapses it restores the weights (and optimizer state) of the last good check
and either stops training or halves the training attack's step size and carries on.
"""

from __future__ import annotations

import math
from collections.abc import Sized
from typing import TYPE_CHECKING, Any, Literal

import torch
from lightning_utilities.core.apply_func import apply_to_collection
from lightning_utilities.core.rank_zero import rank_zero_warn
from torch import Tensor

from advtrain.attacks.base import Attack
from advtrain.attacks.pgd import PGD
from advtrain.callbacks.batch import Key, split_batch
from advtrain.callbacks.subset_evaluation import find_training_callback, training_space
from advtrain.lit.adapter import Callback, MisconfigurationException
from advtrain.modes import model_state_guard
from advtrain.threat import ThreatModel
from advtrain.validation import check_positive_int

if TYPE_CHECKING:
    from lightning.pytorch import LightningModule, Trainer


Action = Literal["restore_and_stop", "restore_and_reduce_alpha"]
ACTIONS: tuple[str, ...] = ("restore_and_stop", "restore_and_reduce_alpha")
REFERENCES: tuple[str, ...] = ("best", "previous")


def _cpu_copy(obj: Any) -> Any:
    """A deep copy of ``obj`` with every tensor detached and copied to the CPU."""
    return apply_to_collection(obj, Tensor, lambda t: t.detach().to("cpu", copy=True))


def _optional_count(value: int | None, name: str) -> int | None:
    return None if value is None else check_positive_int(value, name)


class CatastrophicOverfittingGuard(Callback):
    """Restores the last good weights when PGD accuracy on training data collapses.

    Wong et al., "Fast is better than free: Revisiting adversarial training", ICLR 2020: a PGD
    check on a training batch every epoch, stopping when its accuracy drops by more than 0.2.

    The examples are fixed once, at the start of ``fit``: ``n_examples`` training examples drawn
    with ``seed`` from the training set (through the loader's own ``collate_fn``, so they have the
    layout the training step sees), or, for iterable datasets, the first examples the loader
    yields. They are never modified, are the same on every rank (each rank attacks its own slice
    and the counts are summed, so every rank takes the same decision) and are saved in the
    checkpoint, so a resumed run measures exactly the same values. The attack is re-seeded before
    every check, so successive values are comparable.

    A check *triggers* when its accuracy is more than ``drop_threshold`` below the reference
    (the best value so far, or the previous check's). Then the weights and optimizer states of
    the last check that did not trigger are restored (kept on the CPU, and in the checkpoint) and

    * ``"restore_and_stop"`` sets ``trainer.should_stop`` (the paper's early stopping), or
    * ``"restore_and_reduce_alpha"`` multiplies the training attack's step size ``alpha`` by
      ``alpha_factor`` and training continues from the restored weights.

    Epoch checks run on the epoch's last training batch, before validation, so validation and
    checkpoints see the restored weights. The callback logs ``guard/pgd_acc`` and
    ``guard/triggered`` (1 when a check of that epoch triggered) and warns on rank zero.

    Args:
        attack: The check's attack; ``None`` builds PGD-10 (step ``2.5·eps/10``, random start)
            at the threat model the Trainer's adversarial-training callback ends training at
            (:meth:`~advtrain.callbacks.AdversarialTraining.final_threat`).
        every_n_epochs: Check at the end of every k-th epoch; ``None`` for no epoch checks.
        every_n_steps: Check after every k-th optimizer step; ``None`` (default) for no step
            checks. At least one of the two must be set.
        n_examples: Number of training examples checked (in total across ranks).
        drop_threshold: A drop in accuracy (absolute, in [0, 1]) larger than this triggers.
        action: ``"restore_and_stop"`` or ``"restore_and_reduce_alpha"``.
        alpha_factor: Factor in (0, 1) applied to the training attack's ``alpha`` by
            ``"restore_and_reduce_alpha"``.
        reference: ``"best"`` (default; also catches a collapse spread over several checks) or
            ``"previous"`` (the paper's rule).
        seed: Seed of the examples' selection and of the attack (re-applied at every check).
        input_key: Where the inputs are in a batch; ``None`` takes the training callback's.
        target_key: Where the labels are; ``None`` takes the training callback's.
        log_prefix: Prefix of the logged values.

    Attributes:
        history: One dict per check: ``step``, ``epoch``, ``pgd_acc``, ``triggered``.
        n_triggers: How many checks triggered.
    """

    def __init__(
        self,
        attack: Attack | None = None,
        every_n_epochs: int | None = 1,
        every_n_steps: int | None = None,
        n_examples: int = 256,
        drop_threshold: float = 0.2,
        action: Action = "restore_and_stop",
        alpha_factor: float = 0.5,
        reference: Literal["best", "previous"] = "best",
        seed: int = 0,
        input_key: Key | None = None,
        target_key: Key | None = None,
        log_prefix: str = "guard/",
    ) -> None:
        super().__init__()
        if attack is not None and not isinstance(attack, Attack):
            raise MisconfigurationException(
                f"attack must be an advtrain Attack (e.g. advtrain.attacks.PGD), got "
                f"{type(attack).__name__}"
            )
        try:
            self.every_n_epochs = _optional_count(every_n_epochs, "every_n_epochs")
            self.every_n_steps = _optional_count(every_n_steps, "every_n_steps")
            self.n_examples = check_positive_int(n_examples, "n_examples")
            self.seed = check_positive_int(seed, "seed", minimum=0)
        except (TypeError, ValueError) as err:
            raise MisconfigurationException(str(err)) from None
        if self.every_n_epochs is None and self.every_n_steps is None:
            raise MisconfigurationException(
                "CatastrophicOverfittingGuard needs every_n_epochs or every_n_steps (or both)"
            )
        if isinstance(drop_threshold, bool) or not 0.0 <= float(drop_threshold) < 1.0:
            raise MisconfigurationException(
                "drop_threshold is a drop in accuracy in [0, 1) (paper: 0.2), got "
                f"{drop_threshold!r}"
            )
        if action not in ACTIONS:
            raise MisconfigurationException(
                f"action must be one of {list(ACTIONS)}, got {action!r}"
            )
        if isinstance(alpha_factor, bool) or not 0.0 < float(alpha_factor) < 1.0:
            raise MisconfigurationException(
                f"alpha_factor must lie in (0, 1) so the step size shrinks, got {alpha_factor!r}"
            )
        if reference not in REFERENCES:
            raise MisconfigurationException(
                f"reference must be one of {list(REFERENCES)}, got {reference!r}"
            )
        self.attack = attack
        self.drop_threshold = float(drop_threshold)
        self.action = action
        self.alpha_factor = float(alpha_factor)
        self.reference = reference
        self.input_key = input_key
        self.target_key = target_key
        self.log_prefix = log_prefix
        self.history: list[dict[str, Any]] = []
        self.n_triggers = 0
        self._best: float | None = None
        self._previous: float | None = None
        self._good: dict[str, Any] | None = None
        self._examples: tuple[Tensor, Tensor] | None = None
        self._from_batches = False
        self._last_captured = -1
        self._alpha_target: Attack | None = None
        self._alpha: float | None = None
        self._last_step_checked = -1
        self._last_epoch_checked = -1
        self._triggered_this_epoch = False

    # -- setup ----------------------------------------------------------------------------------
    @property
    def keys(self) -> tuple[Key, Key]:
        """``(input_key, target_key)`` in use (resolved at ``setup``)."""
        return (
            self.input_key if self.input_key is not None else 0,
            self.target_key if self.target_key is not None else 1,
        )

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        training = find_training_callback(trainer)
        if training is not None:
            if self.input_key is None:
                self.input_key = getattr(training, "input_key", None)
            if self.target_key is None:
                self.target_key = getattr(training, "target_key", None)
        if self.attack is None:
            threat = training.final_threat(trainer) if training is not None else None  # type: ignore[attr-defined]
            if not isinstance(threat, ThreatModel):
                raise MisconfigurationException(
                    "CatastrophicOverfittingGuard needs attack= when the Trainer has no "
                    "adversarial-training callback (AdversarialTraining, FreeAdversarialTraining) "
                    "to take the threat model from"
                )
            self.attack = PGD(
                eps=threat.eps, norm=threat.norm, bounds=threat.bounds, steps=10, seed=self.seed
            )
        if self.action == "restore_and_reduce_alpha":
            self._alpha_target = self._resolve_alpha_target(training)

    @staticmethod
    def _resolve_alpha_target(training: Any) -> Attack:
        attack = getattr(training, "attack", None) if training is not None else None
        if attack is None and training is not None:
            attack = getattr(getattr(training, "loss", None), "attack", None)
        if not isinstance(attack, Attack) or not hasattr(attack, "alpha"):
            raise MisconfigurationException(
                "action='restore_and_reduce_alpha' needs an AdversarialTraining callback whose "
                "attack has a step size alpha (e.g. FGSM or PGD); use action='restore_and_stop'"
            )
        schedules = getattr(training, "schedules", {}) or {}
        if any(name.split(".")[-1] == "alpha" for name in schedules):
            raise MisconfigurationException(
                "action='restore_and_reduce_alpha' cannot lower alpha while a schedule drives "
                "it; remove the alpha schedule or use action='restore_and_stop'"
            )
        return attack

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._alpha_target is not None and self._alpha is not None:
            self._alpha_target.alpha = self._alpha  # type: ignore[attr-defined]
        if self._examples is None:
            self._examples = self._examples_from_dataset(trainer)
            self._from_batches = self._examples is None

    def _examples_from_dataset(self, trainer: Trainer) -> tuple[Tensor, Tensor] | None:
        """``n_examples`` seeded training examples collated like a batch, or ``None``."""
        loader = trainer.train_dataloader
        dataset = getattr(loader, "dataset", None)
        collate = getattr(loader, "collate_fn", None)
        if not isinstance(dataset, Sized) or not hasattr(dataset, "__getitem__") or collate is None:
            return None
        n = len(dataset)
        if n == 0:
            return None
        gen = torch.Generator()
        gen.manual_seed(self.seed)
        idx = torch.randperm(n, generator=gen)[: self.n_examples].tolist()
        try:
            batch = collate([dataset[i] for i in idx])
        except (TypeError, KeyError, IndexError, NotImplementedError):
            return None
        x, y = split_batch(batch, *self.keys)
        return x.detach().cpu().clone(), y.detach().cpu().clone()

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if not self._from_batches:
            return
        # Iterable datasets: the first examples this rank sees (each rank keeps its own).
        have = 0 if self._examples is None else self._examples[0].shape[0]
        budget = math.ceil(self.n_examples / max(trainer.world_size, 1)) - have
        if budget <= 0:
            return
        x, y = split_batch(batch, *self.keys)
        if x.data_ptr() == self._last_captured:
            return  # the same batch replayed (FreeAdversarialTraining)
        self._last_captured = x.data_ptr()
        x, y = x[:budget].detach().cpu().clone(), y[:budget].detach().cpu().clone()
        if self._examples is not None:
            x = torch.cat([self._examples[0], x])
            y = torch.cat([self._examples[1], y])
        self._examples = (x, y)

    # -- checks ---------------------------------------------------------------------------------
    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._triggered_this_epoch = False

    def on_train_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        step = trainer.global_step
        if (
            self.every_n_steps is not None
            and step > 0
            and step % self.every_n_steps == 0
            and step != self._last_step_checked
        ):
            self._last_step_checked = step
            self._check(trainer, pl_module)
        n_batches = trainer.num_training_batches
        if isinstance(n_batches, int) and batch_idx + 1 >= n_batches:
            self._epoch_check(trainer, pl_module)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._epoch_check(trainer, pl_module)  # loaders of unknown length; no-op otherwise
        if self.history and self.history[-1]["epoch"] == trainer.current_epoch:
            pl_module.log(
                self.log_prefix + "triggered",
                float(self._triggered_this_epoch),
                on_step=False,
                on_epoch=True,
                reduce_fx="max",
            )

    def _epoch_check(self, trainer: Trainer, pl_module: LightningModule) -> None:
        epoch = trainer.current_epoch
        if self.every_n_epochs is None or epoch == self._last_epoch_checked:
            return
        if (epoch + 1) % self.every_n_epochs != 0:
            return
        self._last_epoch_checked = epoch
        if self.history and self.history[-1]["step"] == trainer.global_step:
            return  # a step check just measured these very weights
        self._check(trainer, pl_module)

    def measure(self, trainer: Trainer, pl_module: LightningModule) -> float | None:
        """PGD accuracy on the fixed examples, summed over ranks; ``None`` before any exist."""
        device = pl_module.device
        correct = torch.zeros((), device=device)
        total = torch.zeros((), device=device)
        if self._examples is not None:
            x_all, y_all = self._examples
            if not self._from_batches:  # the same examples on every rank: take this rank's slice
                world, rank = max(trainer.world_size, 1), trainer.global_rank
                x_all, y_all = x_all[rank::world], y_all[rank::world]
            attack = self.attack
            assert attack is not None
            attack.reseed(self.seed + (trainer.global_rank if self._from_batches else 0))
            # the training callback's view: pixels when the data is normalised, its logits
            space = training_space(trainer)
            model = pl_module if space is None else space.view(pl_module)
            for i in range(0, x_all.shape[0], 256):
                x = x_all[i : i + 256].to(device)
                y = y_all[i : i + 256].to(device)
                if space is not None:
                    x = space.to_pixels(x)
                x_adv = attack(model, x, y)
                with torch.no_grad(), model_state_guard(model, "eval"):
                    pred = model(x_adv).argmax(dim=1)
                correct = correct + (pred == y).sum()
                total = total + y.numel()
        correct = trainer.strategy.reduce(correct.float(), reduce_op="sum")
        total = trainer.strategy.reduce(total.float(), reduce_op="sum")
        if float(total) == 0:
            return None
        return float(correct) / float(total)

    def _check(self, trainer: Trainer, pl_module: LightningModule) -> None:
        acc = self.measure(trainer, pl_module)
        if acc is None:
            return
        ref = self._best if self.reference == "best" else self._previous
        triggered = ref is not None and self._good is not None and acc < ref - self.drop_threshold
        # Every rank computed the same reduced value; rank zero's decision is made explicit anyway.
        triggered = bool(trainer.strategy.broadcast(triggered, src=0))
        self.history.append(
            {
                "step": int(trainer.global_step),
                "epoch": int(trainer.current_epoch),
                "pgd_acc": acc,
                "triggered": triggered,
            }
        )
        pl_module.log(self.log_prefix + "pgd_acc", acc, on_step=False, on_epoch=True)
        if triggered:
            self._trigger(trainer, pl_module, acc, ref)  # type: ignore[arg-type]
            return
        self._good = {
            "module": _cpu_copy(pl_module.state_dict()),
            "optimizers": [_cpu_copy(opt.state_dict()) for opt in trainer.optimizers],
            "pgd_acc": acc,
            "step": int(trainer.global_step),
        }
        self._previous = acc
        self._best = acc if self._best is None else max(self._best, acc)

    def _trigger(
        self, trainer: Trainer, pl_module: LightningModule, acc: float, ref: float
    ) -> None:
        assert self._good is not None
        self.n_triggers += 1
        self._triggered_this_epoch = True
        pl_module.load_state_dict(self._good["module"])
        for opt, state in zip(trainer.optimizers, self._good["optimizers"], strict=True):
            opt.load_state_dict(state)
        self._previous = float(self._good["pgd_acc"])
        what = (
            f"catastrophic overfitting: PGD accuracy on {self.n_examples} training examples fell "
            f"from {ref:.3f} to {acc:.3f} at step {trainer.global_step} (epoch "
            f"{trainer.current_epoch}); restored the weights of step {self._good['step']}"
        )
        if self.action == "restore_and_stop":
            trainer.should_stop = True
            rank_zero_warn(what + " and stopped training")
            return
        target = self._alpha_target
        assert target is not None
        old = float(target.alpha)  # type: ignore[attr-defined]
        target.alpha = old * self.alpha_factor  # type: ignore[attr-defined]
        self._alpha = float(target.alpha)  # type: ignore[attr-defined]
        pl_module.log(self.log_prefix + "alpha", self._alpha, on_step=False, on_epoch=True)
        rank_zero_warn(
            what + f" and lowered the training attack's alpha from {old:.4g} to {self._alpha:.4g}"
        )

    # -- checkpointing --------------------------------------------------------------------------
    @property
    def state_key(self) -> str:
        """The checkpoint key: the class name, plus the log prefix when it is not the default,
        so several guards (e.g. one per attack, each with its own ``log_prefix``) can share a
        Trainer and each resume its own state."""
        if self.log_prefix == "guard/":
            return type(self).__qualname__
        return self._generate_state_key(log_prefix=self.log_prefix)

    def state_dict(self) -> dict[str, Any]:
        return {
            "history": [dict(h) for h in self.history],
            "n_triggers": self.n_triggers,
            "best": self._best,
            "previous": self._previous,
            "good": self._good,
            "examples": None if self._from_batches else self._examples,
            "alpha": self._alpha,
            "last_step_checked": self._last_step_checked,
            "last_epoch_checked": self._last_epoch_checked,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = [dict(h) for h in state_dict.get("history", [])]
        self.n_triggers = int(state_dict.get("n_triggers", 0))
        self._best = state_dict.get("best")
        self._previous = state_dict.get("previous")
        self._good = state_dict.get("good")
        examples = state_dict.get("examples")
        self._examples = None if examples is None else (examples[0], examples[1])
        self._alpha = state_dict.get("alpha")
        self._last_step_checked = int(state_dict.get("last_step_checked", -1))
        self._last_epoch_checked = int(state_dict.get("last_epoch_checked", -1))


__all__ = ["ACTIONS", "CatastrophicOverfittingGuard", "find_training_callback"]
