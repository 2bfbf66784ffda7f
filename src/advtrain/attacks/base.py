"""The attack interface and the guarantees every attack gives.

An attack is configured once from plain keyword arguments and called as
``attack(model, x, y) -> x_adv``; the model is passed at call time, so one object serves training
and evaluation. Every attack:

* validates its inputs (finite floats inside ``bounds``, integer labels in range) and raises a
  ``ValueError``/``TypeError`` that says what to change;
* computes input gradients only (``torch.autograd.grad``), never ``.backward()`` into parameters;
* leaves the model exactly as found: parameters, ``.grad``, each module's ``training`` flag,
  BatchNorm running statistics and ``requires_grad`` flags (see
  :func:`advtrain.modes.model_state_guard`);
* never writes into ``x`` or ``y``; returns a new, detached tensor of the same shape, dtype and
  device, inside the threat model's ball and box.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from advtrain.generators import DeviceGenerators, SeededRandomness
from advtrain.modes import BN_MODES, BNMode, check_bn_mode, model_state_guard
from advtrain.randomness import Draws
from advtrain.threat import ThreatModel, check_labels
from advtrain.validation import check_positive_int

_DTYPE_HINTS = ("dtype", "scalar type", "Input type", "same type")


def _dtype_error(err: RuntimeError, model: nn.Module, x: Tensor) -> Exception:
    """A clear ``TypeError`` for inputs of another floating dtype than the model's parameters
    (``err`` itself for any other failure)."""
    param = next((p for p in model.parameters() if p.is_floating_point()), None)
    if param is None or param.dtype == x.dtype or not any(h in str(err) for h in _DTYPE_HINTS):
        return err
    return TypeError(
        f"the inputs are {x.dtype} but the model's parameters are {param.dtype}, and the model "
        f"cannot take them ({str(err).splitlines()[0]}); convert the inputs to the model's dtype "
        f"(e.g. x.to({param.dtype})) or the model to theirs"
    )


class Attack(SeededRandomness, ABC):
    """Base class of every attack: ``attack(model, x, y) -> x_adv``.

    Subclasses implement :meth:`perturb`; :meth:`__call__` validates inputs, guards the model's
    state and detaches the result. Randomness comes from a private ``torch.Generator`` seeded
    with ``seed`` (per device), whose state is part of :meth:`state_dict` so that a resumed
    training run draws the same random starts.

    Args:
        eps: Radius of the perturbation ball, in input units.
        norm: ``"linf"``, ``"l2"`` (and ``"l1"`` where the attack supports it).
        bounds: ``(low, high)`` of valid inputs.
        seed: Seed of the attack's random generator; ``None`` draws from torch's global RNG.
        bn_mode: BatchNorm/Dropout behaviour during the attack, see
            :func:`advtrain.modes.model_state_guard`.
    """

    #: Norms a subclass supports.
    supported_norms: tuple[str, ...] = ("linf", "l2")
    #: A short name used in reports, e.g. ``"pgd-50x5"``.
    name: str = "attack"

    def __init__(
        self,
        eps: float,
        norm: str = "linf",
        bounds: Sequence[float] = (0.0, 1.0),
        seed: int | None = None,
        bn_mode: BNMode = "eval",
    ) -> None:
        if isinstance(norm, str) and norm.lower() not in self.supported_norms:
            raise ValueError(
                f"{type(self).__name__} supports norm in {list(self.supported_norms)}, got {norm!r}"
            )
        self.threat = ThreatModel(norm=norm, eps=eps, bounds=tuple(bounds))  # type: ignore[arg-type]
        self.bn_mode = check_bn_mode(bn_mode)
        if seed is not None:
            seed = check_positive_int(seed, "seed", minimum=0)
        self._generators = DeviceGenerators(seed)
        self._label_range: tuple[int, int] | None = None
        self._call_draws: Draws | None = None  # per-example draws of the current call

    # -- threat-model attributes, settable so schedules can drive them --------------------------
    @property
    def eps(self) -> float:
        """Radius of the perturbation ball (schedulable)."""
        return self.threat.eps

    @eps.setter
    def eps(self, value: float) -> None:
        self.threat = ThreatModel(norm=self.threat.norm, eps=value, bounds=self.threat.bounds)

    @property
    def norm(self) -> str:
        """The threat model's norm."""
        return self.threat.norm

    @property
    def bounds(self) -> tuple[float, float]:
        """The input box ``(low, high)``."""
        return self.threat.bounds

    # -- randomness -----------------------------------------------------------------------------
    def draws(self, device: torch.device) -> Draws:
        """The current call's random numbers: per example when the call was given ``ids``,
        else the attack's generator (see :mod:`advtrain.randomness`)."""
        call = self._call_draws
        if call is not None:
            return call
        return Draws(device, self.generator(device))

    @contextlib.contextmanager
    def narrow(self, rows: Tensor) -> Iterator[None]:
        """Runs a block on the sub-batch ``rows`` of the current call (per-example draws follow
        the examples; generator draws are unchanged)."""
        previous = self._call_draws
        if previous is not None:
            self._call_draws = previous.narrow(rows)
        try:
            yield
        finally:
            self._call_draws = previous

    @contextlib.contextmanager
    def example_ids(self, ids: Tensor | None, device: torch.device) -> Iterator[None]:
        """Runs a block (e.g. a direct :meth:`perturb`) with per-example draws for ``ids``
        (``None``: the generator), seeded by this attack's seed (0 when unseeded)."""
        previous = self._call_draws
        self._call_draws = None if ids is None else Draws.per_example(self.seed or 0, ids, device)
        try:
            yield
        finally:
            self._call_draws = previous

    def reseed(self, seed: int | None) -> None:
        """Restarts the attack's random stream from ``seed``.

        Generators already made are re-seeded in place (the same stream as a new one: training
        callbacks reseed every step, and making a CUDA generator each time costs more).
        """
        self._generators.reseed(seed)

    def state_dict(self) -> dict[str, Any]:
        """The attack's mutable state: seed and generator states (for exact resume)."""
        return {
            "seed": self.seed,
            "eps": self.eps,
            "generators": self._generators.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores :meth:`state_dict`'s output."""
        self.seed = state.get("seed", self.seed)
        if "eps" in state:
            self.eps = state["eps"]
        self._generators.load_state_dict(state.get("generators", {}))

    # -- the call -------------------------------------------------------------------------------
    def validate(self, x: Tensor, y: Tensor) -> None:
        """Checks ``x`` (finite floats inside the bounds) and ``y`` (integer labels, one each).

        The labels' range is read in the same host sync as the inputs' and kept for
        :meth:`check_logits` during this call (one sync per attack call, not two: on a GPU each
        sync stalls the queue of launched kernels).
        """
        check_labels(y, x.shape[0])
        self._label_range = self.threat.check_inputs(x, labels=y)

    def check_logits(self, logits: Tensor, y: Tensor) -> None:
        """Checks the model's output against the labels on the attack's first forward pass."""
        if not isinstance(logits, Tensor):
            raise ValueError(
                f"the model must return a logits tensor of shape (batch, num_classes), got a "
                f"{type(logits).__name__}; wrap it so that forward returns only the logits"
            )
        if logits.dim() != 2 or logits.shape[0] != y.shape[0]:
            raise ValueError(
                f"the model must return logits of shape (batch, num_classes), got "
                f"{tuple(logits.shape)} for a batch of {y.shape[0]}"
            )
        label_range = getattr(self, "_label_range", None)  # read by validate() in this call
        check_labels(y, y.shape[0], num_classes=logits.shape[1], label_range=label_range)

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, ids: Tensor | None = None) -> Tensor:
        """Returns adversarial examples for ``model`` at ``(x, y)``; see the module docstring.

        Args:
            model: The classifier.
            x: Inputs inside ``bounds``.
            y: Integer labels.
            ids: Optional integer id per example (e.g. its index in the test set): random
                starts and restarts are then drawn per example from ``(seed, id)``, so an
                example's result does not depend on the batch it is in (evaluation); without,
                from the attack's generator (training).
        """
        if self.eps == 0:  # nothing can move; the arguments are still checked
            return self.run_checked(model, x, y, lambda x_in, _: x_in.clone(), ids)
        return self.run_checked(model, x, y, lambda xs, ys: self.perturb(model, xs, ys), ids)

    def run_checked(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        work: Callable[[Tensor, Tensor], Tensor],
        ids: Tensor | None = None,
    ) -> Tensor:
        """``work(x, y)`` under the guarantees of :meth:`__call__`, detached: the model and the
        batch checked, autograd on (also under inference mode), the model in the attack's
        BatchNorm mode and restored afterwards, labels as int64, per-example draws for ``ids``.
        (:meth:`__call__` runs :meth:`perturb` this way; other entry points such as
        :meth:`FMN.min_norm <advtrain.attacks.FMN.min_norm>` run their own work.)
        """
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.validate(x, y)
        if ids is not None and (
            not isinstance(ids, Tensor)
            or ids.dtype.is_floating_point
            or ids.dtype == torch.bool
            or tuple(ids.shape) != (x.shape[0],)
        ):
            raise TypeError(
                f"ids must be an integer tensor of shape ({x.shape[0]},), one id per example"
            )
        try:
            # Attacks need autograd even when called from validation under inference mode.
            with (
                torch.inference_mode(False),
                torch.enable_grad(),
                model_state_guard(model, self.bn_mode),
            ):
                x_in = x.detach().clone() if x.is_inference() else x.detach()
                y_in = y.detach().clone() if y.is_inference() else y.detach()
                if y_in.dtype != torch.long:  # int32/uint8 labels: losses index with int64
                    y_in = y_in.long()
                try:
                    with self.example_ids(ids, x.device):
                        out = work(x_in, y_in)
                except RuntimeError as err:
                    raise _dtype_error(err, model, x) from None
            return out.detach()
        finally:
            # The range belongs to this call's labels (perturb may see a subset of them, whose
            # range lies inside); a direct perturb() call later checks its own labels.
            self._label_range = None

    @abstractmethod
    def perturb(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """Computes adversarial examples; ``model`` is already in the attack's mode."""

    def extra_repr(self) -> str:
        """Extra fields shown by :meth:`__repr__`."""
        return ""

    def __repr__(self) -> str:
        extra = self.extra_repr()
        return (
            f"{type(self).__name__}(eps={self.eps:.6g}, norm={self.norm!r}, bounds={self.bounds}"
            + (f", {extra}" if extra else "")
            + ")"
        )


# model_state_guard, BN_MODES, BNMode (advtrain.modes) and check_positive_int (advtrain.validation)
# are re-exported for the modules that still import them from here.
__all__ = ["BN_MODES", "Attack", "BNMode", "check_positive_int", "model_state_guard"]
