"""Sanity checks that tell when a robustness evaluation cannot be trusted: the model checks.

Each check returns a :class:`SanityFlag` whether or not it fires, so a report can show what was
checked. The checks follow the warning signs of overestimated robustness collected by Carlini et
al. and Athalye et al. and the automatic flags of AutoAttack:

* the model is randomised (two forward passes on one input differ): standard attacks then chase
  noise, and EoT-style attacks are needed;
* the model returns probabilities instead of logits: the attack losses saturate;
* input gradients are zero (non-differentiable layers such as input quantisation) or vanish;
* a black-box attack (Square) beats the white-box ones: the gradients mislead the attacks;
* robust accuracy does not fall as eps grows, or eps = 0 does not give the clean accuracy: the
  evaluation itself is inconsistent.

References:
    Athalye, Carlini & Wagner, "Obfuscated Gradients Give a False Sense of Security: Circumventing
    Defenses to Adversarial Examples", ICML 2018 (shattered, stochastic and vanishing gradients).
    Carlini et al., "On Evaluating Adversarial Robustness", arXiv:1902.06705, 2019 (black-box
    attacks beating white-box ones, accuracy not reaching zero or not falling with eps).
    Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
    parameter-free attacks", ICML 2020 (AutoAttack's flags: randomised model, softmax output, zero
    gradient, Square improving on the white-box attacks).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advtrain.attacks.objectives import cw_margin
from advtrain.attacks.precision import loss_scaled_logits
from advtrain.modes import BN_MODES, BNMode, model_state_guard
from advtrain.threat import check_input_batch, check_labels

RANDOMIZED_MODEL = "randomized_model"
PROBABILITY_OUTPUTS = "probability_outputs"
ZERO_GRADIENTS = "zero_gradients"
BLACK_BOX_BEATS_WHITE_BOX = "black_box_beats_white_box"
NON_MONOTONE_EPS_CURVE = "non_monotone_eps_curve"
EPS_ZERO_NOT_CLEAN = "eps_zero_not_clean"

#: Result names that aggregate several attacks; never treated as a single white-box attack.
AGGREGATE_NAMES: tuple[str, ...] = ("autoattack", "worst", "ensemble", "clean")


@dataclass(frozen=True)
class SanityFlag:
    """The outcome of one sanity check.

    Attributes:
        code: Stable identifier, e.g. ``"black_box_beats_white_box"``.
        triggered: ``True`` if the check found a problem.
        message: What was observed and what it means.
        advice: What to do about it (empty when nothing needs doing).
        details: The numbers behind the verdict (JSON-serialisable).
    """

    code: str
    triggered: bool
    message: str
    advice: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dictionary (for ``report.json``)."""
        return asdict(self)

    def __str__(self) -> str:
        status = "WARNING" if self.triggered else "ok"
        text = f"[{status}] {self.code}: {self.message}"
        return f"{text} {self.advice}" if self.triggered and self.advice else text


def triggered(flags: Iterable[SanityFlag]) -> list[SanityFlag]:
    """The flags that fired."""
    return [f for f in flags if f.triggered]


def format_flags(flags: Iterable[SanityFlag], only_triggered: bool = True) -> str:
    """One line per flag (by default only those that fired), for logs and reports."""
    shown = [f for f in flags if f.triggered or not only_triggered]
    return "\n".join(str(f) for f in shown)


# -- input validation ---------------------------------------------------------------------------
def check_fraction(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        if isinstance(value, Tensor) and value.numel() == 1:
            value = float(value.item())
        else:
            raise TypeError(f"{name} must be a number in [0, 1], got {value!r}")
    value = float(value)
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(
            f"{name} must be an accuracy in [0, 1], got {value}; pass fractions, not percentages"
        )
    return value


def check_tolerance(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value) >= 0:
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    return float(value)


def check_mapping(value: Any, name: str) -> Mapping[Any, float]:
    if not isinstance(value, Mapping):
        raise TypeError(
            f"{name} must be a mapping (e.g. dict), got {type(value).__name__}; pass "
            "{name: accuracy}"
        )
    return value


# -- model checks -------------------------------------------------------------------------------
def _forward(model: nn.Module, x: Tensor, bn_mode: str) -> Tensor:
    with torch.inference_mode(False), torch.no_grad(), model_state_guard(model, bn_mode):
        out = model(x)
    if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[0] != x.shape[0]:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(
            f"the model must return logits of shape (batch, num_classes), got {shape} for a "
            f"batch of {x.shape[0]}"
        )
    return out.detach().float()


def check_randomized(
    model: nn.Module,
    x: Tensor,
    bn_mode: BNMode = "eval",
    atol: float = 1e-4,
    rtol: float = 1e-3,
) -> SanityFlag:
    """Fires if two forward passes on the same input give different outputs.

    Args:
        model: The classifier.
        x: A batch of inputs.
        bn_mode: The mode the evaluation runs the model in (see
            :func:`advtrain.modes.model_state_guard`); ``"train"`` keeps the modes the model
            has, so a model left in train mode shows its dropout.
        atol: Absolute tolerance on the logits (covers non-deterministic GPU kernels).
        rtol: Relative tolerance on the logits.
    """
    first = _forward(model, x, bn_mode)
    second = _forward(model, x, bn_mode)
    diff = (first - second).abs()
    bad = diff > atol + rtol * first.abs()
    flipped = float((first.argmax(dim=1) != second.argmax(dim=1)).float().mean())
    details = {
        "max_abs_logit_difference": float(diff.max()),
        "fraction_outputs_changed": float(bad.float().mean()),
        "fraction_predictions_changed": flipped,
        "bn_mode": bn_mode,
    }
    if bool(bad.any()):
        return SanityFlag(
            RANDOMIZED_MODEL,
            True,
            f"The model is randomised: two forward passes on the same inputs differ (largest "
            f"logit difference {details['max_abs_logit_difference']:.3g}, "
            f"{flipped:.1%} of predictions change). Attacks then optimise against noise and "
            "the robust accuracy they report is unreliable (usually too high).",
            "If this is unintended, put the model in eval mode (dropout, stochastic layers) or "
            "evaluate with bn_mode='eval'. If the randomness is a defence, evaluate it with "
            "Expectation over Transformation (average the gradients of many forward passes) and "
            "report accuracy over repeated predictions.",
            details,
        )
    return SanityFlag(
        RANDOMIZED_MODEL, False, "The model is deterministic on this batch.", "", details
    )


def check_probability_outputs(logits: Tensor, tol: float = 1e-4) -> SanityFlag:
    """Fires if every row of the model's output is non-negative and sums to one.

    Log-probabilities (``log_softmax`` outputs) are fine: losses and margins on them equal those
    on the logits.
    """
    out = logits.detach().float()
    non_negative = bool((out >= -tol).all())
    sums = out.sum(dim=1)
    max_dev = float((sums - 1).abs().max())
    details = {
        "min_output": float(out.min()),
        "max_row_sum_deviation_from_1": max_dev,
    }
    if non_negative and max_dev <= tol:
        return SanityFlag(
            PROBABILITY_OUTPUTS,
            True,
            "The model outputs probabilities (every row is non-negative and sums to 1): it ends "
            "in a softmax. Attack losses expect logits; on probabilities cross-entropy and margins "
            "saturate and their gradients vanish, which makes the model look more robust than it "
            "is.",
            "Remove the final softmax so that the model returns logits (apply softmax only when "
            "you need probabilities), then rerun the evaluation.",
            details,
        )
    return SanityFlag(PROBABILITY_OUTPUTS, False, "The model returns logits.", "", details)


def _input_gradients(
    model: nn.Module, x: Tensor, y: Tensor, bn_mode: str
) -> tuple[Tensor | None, Tensor | None]:
    """Input gradients of the logit margin and of the cross-entropy (``None`` where the graph
    is cut, e.g. ``detach()`` or numpy inside the model)."""
    with (
        torch.inference_mode(False),
        torch.enable_grad(),
        model_state_guard(model, bn_mode),
    ):
        x_in = x.detach().clone().requires_grad_(True)
        logits = model(x_in)
        if not logits.requires_grad:
            return None, None
        margin = cw_margin(logits, y)
        # Under float16 the cross-entropy gradient of a confident example underflows on its way
        # into the network; per-example loss scaling (as in the attacks) keeps the reading what
        # float32 would give, so saturation is not confused with float16 underflow.
        ce_logits, unscale = loss_scaled_logits(logits, per_example=bn_mode == "eval")
        ce = F.cross_entropy(ce_logits.float(), y, reduction="none")
        (g_margin,) = torch.autograd.grad(margin.sum(), x_in, retain_graph=True, allow_unused=True)
        (g_ce,) = torch.autograd.grad(ce.sum(), x_in, allow_unused=True)
        return g_margin, None if g_ce is None else unscale(g_ce)


def check_gradients(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    bn_mode: BNMode = "eval",
    tol: float = 1e-10,
    max_fraction: float = 0.0,
) -> SanityFlag:
    """Fires if the input gradient of the logit margin is (numerically) zero for some examples.

    The margin ``max_{j≠y} z_j - z_y`` does not saturate, so a zero gradient means the model
    itself blocks gradients (a non-differentiable or piecewise-constant layer, e.g. input
    quantisation). The fraction of examples whose cross-entropy gradient vanishes (softmax
    saturation in float32) is reported in ``details`` as well.

    Args:
        model: The classifier.
        x: A batch of inputs.
        y: Their labels.
        bn_mode: The mode the evaluation runs the model in.
        tol: An example's gradient counts as zero if its L1 norm is at most ``tol``.
        max_fraction: The flag fires when more than this fraction of examples has a zero
            gradient (default: any example, as in AutoAttack).
    """
    g_margin, g_ce = _input_gradients(model, x, y, bn_mode)
    n = x.shape[0]
    norm_margin = (
        torch.zeros(n) if g_margin is None else g_margin.detach().flatten(1).abs().sum(dim=1)
    )
    norm_ce = torch.zeros(n) if g_ce is None else g_ce.detach().flatten(1).abs().sum(dim=1)
    zero_frac = float((norm_margin <= tol).float().mean())
    ce_frac = float((norm_ce <= tol).float().mean())
    details = {
        "fraction_zero_margin_gradient": zero_frac,
        "fraction_zero_cross_entropy_gradient": ce_frac,
        "median_margin_gradient_l1": float(norm_margin.median()),
        "tol": tol,
    }
    if zero_frac > max_fraction:
        return SanityFlag(
            ZERO_GRADIENTS,
            True,
            f"The input gradient is zero for {zero_frac:.1%} of the examples (even for the logit "
            "margin, which does not saturate). Gradient-based attacks (PGD, APGD, FAB) cannot move "
            "those examples, so their robust accuracy is overstated: typical causes are "
            "non-differentiable layers (input quantisation, rounding, JPEG, thresholding) or "
            "gradients blocked with detach().",
            "Evaluate with a black-box attack (Square with many queries) and with BPDA (replace "
            "the non-differentiable layer by a differentiable approximation, e.g. identity, in "
            "the backward pass); report the worst case.",
            details,
        )
    if ce_frac > 0.5:
        message = (
            f"Input gradients are non-zero, but the cross-entropy gradient vanishes for "
            f"{ce_frac:.1%} of the examples (saturated softmax); prefer margin or DLR losses "
            "(APGD-DLR, APGD-T) to cross-entropy for attacks."
        )
    else:
        message = "Input gradients are non-zero."
    return SanityFlag(ZERO_GRADIENTS, False, message, "", details)


def check_model(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    bn_mode: BNMode = "eval",
    grad_tol: float = 1e-10,
    max_zero_grad_fraction: float = 0.0,
) -> list[SanityFlag]:
    """Checks the model on a batch: randomness, probability outputs, zero gradients.

    The model is left exactly as found (modes, parameters, ``.grad``, BatchNorm statistics).

    Args:
        model: The classifier.
        x: A batch of inputs (a few hundred examples are plenty).
        y: Their integer labels.
        bn_mode: The mode the evaluation runs the model in (``"eval"`` by default, as the
            attacks); ``"train"`` checks the model in the modes it has.
        grad_tol: L1 norm at or below which an input gradient counts as zero.
        max_zero_grad_fraction: Fraction of zero-gradient examples tolerated.

    Returns:
        ``[randomized_model, probability_outputs, zero_gradients]`` flags.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if bn_mode not in BN_MODES:
        raise ValueError(f"bn_mode must be one of {list(BN_MODES)}, got {bn_mode!r}")
    check_input_batch(x, None)
    check_labels(y, x.shape[0])
    logits = _forward(model, x, bn_mode)
    check_labels(y, x.shape[0], num_classes=logits.shape[1])
    return [
        check_randomized(model, x, bn_mode=bn_mode),
        check_probability_outputs(logits),
        check_gradients(
            model, x, y, bn_mode=bn_mode, tol=grad_tol, max_fraction=max_zero_grad_fraction
        ),
    ]


__all__ = [
    "AGGREGATE_NAMES",
    "BLACK_BOX_BEATS_WHITE_BOX",
    "EPS_ZERO_NOT_CLEAN",
    "NON_MONOTONE_EPS_CURVE",
    "PROBABILITY_OUTPUTS",
    "RANDOMIZED_MODEL",
    "ZERO_GRADIENTS",
    "SanityFlag",
    "check_fraction",
    "check_gradients",
    "check_mapping",
    "check_model",
    "check_probability_outputs",
    "check_randomized",
    "check_tolerance",
    "format_flags",
    "triggered",
]
