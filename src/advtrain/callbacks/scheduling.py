"""Driving an attack's or a loss's attributes by schedules during a Lightning run.

:class:`~advtrain.callbacks.AdversarialTraining` sets ``eps``, ``alpha``, ``beta``… from
:mod:`advtrain.schedules` at every step, as functions of the run's progress, and seeds each step's
random starts from ``(seed, rank, step, batch)``.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from advtrain.attacks.base import Attack
from advtrain.schedules.base import Progress

if TYPE_CHECKING:
    from lightning.pytorch import Trainer


def training_progress(trainer: Trainer, batch_idx: int) -> Progress:
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


def end_progress(trainer: Trainer | None) -> Progress:
    """The :class:`Progress` at the end of ``trainer``'s run (fraction 1)."""
    if trainer is None:
        return Progress(fraction=1.0)
    steps = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else 0
    if not steps:
        try:
            steps = int(trainer.estimated_stepping_batches)
        except Exception:
            steps = 0
    return Progress(step=steps, epoch=float(trainer.max_epochs or 0), fraction=1.0)


def step_seed(seed: int, rank: int, step: int, batch_idx: int) -> int:
    """A 63-bit seed unique to ``(seed, rank, step, batch)``; independent streams per rank."""
    digest = hashlib.blake2b(f"{seed}:{rank}:{step}:{batch_idx}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "little") >> 1


def resolve_attribute(target: Any, name: str) -> tuple[Any, str]:
    """Finds the object that owns attribute ``name`` (dotted paths allowed).

    A bare name missing on ``target`` is looked up on ``target.attack`` (a loss wrapper's inner
    attack), so ``{"eps": ...}`` drives TRADES's inner attack.

    Raises:
        AttributeError: If no such attribute exists.
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


def schedulable_names(target: Any) -> list[str]:
    """The numeric attributes of ``target`` (and of its inner ``attack``) a schedule can drive."""
    names = {
        n
        for n in dir(target)
        if not n.startswith("_") and isinstance(getattr(target, n, None), (int, float))
    }
    inner = getattr(target, "attack", None)
    if isinstance(inner, Attack):
        names |= {f"attack.{n}" for n in schedulable_names(inner)}
    return sorted(n for n in names if not isinstance(getattr(target, n, None), bool))


__all__ = [
    "end_progress",
    "resolve_attribute",
    "schedulable_names",
    "step_seed",
    "training_progress",
]
