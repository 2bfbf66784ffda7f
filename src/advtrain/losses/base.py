"""The training-loss interface: ``loss(model, x, y) -> (loss, logs)``.

A training loss wraps everything one optimisation step needs besides the optimiser: the inner
attack (if any), the forward passes and the objective. It is called with the model as the
training loop has it (usually in train mode) and returns

* ``loss``: a scalar tensor with a graph to the model's parameters, ready for ``.backward()``
  (or for Lightning's ``training_step`` to return);
* ``logs``: a dict of detached scalar tensors named ``"loss/..."`` and ``"acc/..."``, ready for
  ``self.log_dict`` or a plain logger.

Every loss leaves the user's ``x`` and ``y`` untouched and the model's modes as it found them
(its attack restores the model's state itself, see :func:`advtrain.modes.model_state_guard`).
"""

from __future__ import annotations

import math
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from advtrain.attacks.base import Attack


def check_beta(value: Any, name: str = "beta") -> float:
    """Validates a non-negative, finite loss weight (TRADES/MART ``beta``).

    Raises:
        TypeError: If ``value`` is not a real number.
        ValueError: If it is negative, NaN or infinite.
    """
    if isinstance(value, Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}: {value!r}")
    out = float(value)
    if not math.isfinite(out) or out < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return out


def check_attack(attack: Any, owner: str) -> Attack:
    """Checks that ``attack`` is an advtrain :class:`~advtrain.attacks.base.Attack`."""
    if not isinstance(attack, Attack):
        raise TypeError(
            f"{owner} needs an advtrain Attack (e.g. advtrain.attacks.PGD(eps=8/255)), got "
            f"{type(attack).__name__}"
        )
    return attack


def resolve_attack(
    attack: Attack | None,
    owner: str,
    build: Callable[..., Attack],
    **overrides: float | int | None,
) -> Attack:
    """The attack a loss uses: ``attack`` as given, or ``build(**overrides)`` for the default.

    Args:
        attack: An explicit attack, or ``None`` for the loss's default.
        owner: The loss's name, for error messages.
        build: Builds the default attack from the keyword overrides that are not ``None``.
        **overrides: Keyword conveniences such as ``eps``, ``steps``, ``alpha``.

    Raises:
        ValueError: If both ``attack`` and an override are given.
    """
    given = {k: v for k, v in overrides.items() if v is not None}
    if attack is not None:
        if given:
            raise ValueError(
                f"{owner}: pass either attack= or the conveniences {sorted(given)}, not both; "
                "set them on the attack instead"
            )
        return check_attack(attack, owner)
    return build(**given)


def accuracy(logits: Tensor, y: Tensor) -> Tensor:
    """Fraction of the batch whose top logit is the label, as a detached float tensor."""
    return (logits.detach().argmax(dim=1) == y).float().mean()


class TrainingLoss(ABC):
    """Base class of advtrain's training losses: ``loss(model, x, y) -> (loss, logs)``.

    Subclasses implement :meth:`compute`; :meth:`__call__` checks the arguments. Use
    :meth:`logits` for every forward pass, so a model that returns something other than
    ``(batch, classes)`` logits fails with a clear message.
    """

    def __init__(self) -> None:
        self._checked_probabilities = False

    @property
    def attack(self) -> Attack | None:
        """The inner attack (schedules drive its ``eps``); ``None`` for attack-free losses."""
        return getattr(self, "_attack", None)

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The training loss of ``model`` on the batch ``(x, y)`` and its logs.

        Args:
            model: A classifier returning logits of shape ``(batch, classes)``; used in the mode
                it is in (train mode for training).
            x: Inputs, inside the attack's ``bounds``; not modified.
            y: Integer labels of shape ``(batch,)``; not modified.

        Returns:
            ``(loss, logs)``: a scalar loss with a graph to the parameters, and detached scalars.

        Raises:
            TypeError: If ``model`` is not an ``nn.Module`` or ``x``/``y`` are not tensors.
            ValueError: If the model's output is not a ``(batch, classes)`` logits tensor.
        """
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(x, Tensor) or not isinstance(y, Tensor):
            raise TypeError(
                f"x and y must be tensors, got {type(x).__name__} and {type(y).__name__}"
            )
        if x.dim() < 1 or y.dim() != 1 or x.shape[0] != y.shape[0]:
            raise ValueError(
                f"x must be a batch (batch, ...) and y its labels (batch,), got shapes "
                f"{tuple(x.shape)} and {tuple(y.shape)}"
            )
        return self.compute(model, x, y)

    @abstractmethod
    def compute(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss and logs; arguments already checked."""

    def logits(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """``model(x)`` as float32 logits, after checking the output's type and shape.

        Raises:
            ValueError: If the output is not a tensor of shape ``(batch, classes)``.
        """
        out = model(x)
        if not isinstance(out, Tensor):
            raise ValueError(
                f"the model must return a logits tensor of shape (batch, num_classes), got a "
                f"{type(out).__name__}; wrap it so that forward returns only the logits"
            )
        if out.dim() != 2 or out.shape[0] != y.shape[0] or out.shape[1] < 2:
            raise ValueError(
                f"the model must return logits of shape (batch, num_classes >= 2), got "
                f"{tuple(out.shape)} for a batch of {y.shape[0]}"
            )
        if not self._checked_probabilities:
            # Once per loss object (this syncs with the device): softmax outputs are a common
            # mistake that makes cross-entropy silently wrong.
            self._checked_probabilities = True
            with torch.no_grad():
                rows = out.detach().float()
                if bool((rows >= 0).all()) and bool(
                    torch.allclose(rows.sum(dim=1), torch.ones_like(rows[:, 0]), atol=1e-4)
                ):
                    warnings.warn(
                        "the model's outputs look like probabilities (non-negative rows summing "
                        "to 1); advtrain losses expect logits, so remove the final softmax",
                        stacklevel=4,
                    )
        return out.float()

    def state_dict(self) -> dict[str, Any]:
        """The inner attack's state (random streams), for an exact resume."""
        attack = self.attack
        return {"attack": attack.state_dict() if attack is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores :meth:`state_dict`'s output."""
        attack = self.attack
        if attack is not None and state.get("attack") is not None:
            attack.load_state_dict(state["attack"])

    def extra_repr(self) -> str:
        """Fields shown by :meth:`__repr__`."""
        return ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"


__all__ = ["TrainingLoss", "accuracy", "check_attack", "check_beta", "resolve_attack"]
