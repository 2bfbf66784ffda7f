"""Sanity checks that tell when a robustness evaluation cannot be trusted.

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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advtrain.attacks.base import BN_MODES, BNMode, model_state_guard
from advtrain.attacks.objectives import cw_margin
from advtrain.attacks.precision import loss_scaled_logits
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
def _check_fraction(value: Any, name: str) -> float:
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


def _check_tolerance(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value) >= 0:
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    return float(value)


def _check_mapping(value: Any, name: str) -> Mapping[Any, float]:
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
            :func:`advtrain.attacks.base.model_state_guard`); ``"train"`` keeps the modes the model
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
    with (
        torch.inference_mode(False),
        torch.enable_grad(),
        model_state_guard(model, bn_mode),
    ):
        x_in = x.detach().clone().requires_grad_(True)
        logits = model(x_in)
        margin = cw_margin(logits, y)
        # Under float16 the cross-entropy gradient of a confident example underflows on its way
        # into the network; per-example loss scaling (as in the attacks) keeps the reading what
        # float32 would give, so saturation is not confused with float16 underflow.
        ce_logits, unscale = loss_scaled_logits(logits, per_example=bn_mode == "eval")
        ce = F.cross_entropy(ce_logits.float(), y, reduction="none")
        if logits.requires_grad:
            (g_margin,) = torch.autograd.grad(
                margin.sum(), x_in, retain_graph=True, allow_unused=True
            )
            (g_ce,) = torch.autograd.grad(ce.sum(), x_in, allow_unused=True)
            g_ce = None if g_ce is None else unscale(g_ce)
        else:  # the graph is cut (e.g. detach() or numpy inside the model)
            g_margin = g_ce = None
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


# -- result checks ------------------------------------------------------------------------------
def _matches(name: str, prefixes: Sequence[str]) -> bool:
    low = name.lower()
    return any(low.startswith(p.lower()) for p in prefixes)


def check_black_box(
    per_attack_acc: Mapping[str, float],
    white_box: Sequence[str] | None = None,
    black_box: Sequence[str] = ("square",),
    margin: float = 0.03,
) -> SanityFlag:
    """Fires if a black-box attack finds clearly more adversarial examples than the white-box ones.

    With full access to gradients, white-box attacks should be at least as strong as a black-box
    search; if Square's robust accuracy is lower than the best white-box attack's by more than
    ``margin``, the gradients mislead the white-box attacks (gradient masking).

    Args:
        per_attack_acc: Robust accuracy (fraction) per attack name, on the same examples; either
            each attack alone or the running worst case after each attack.
        white_box: Names (prefixes) of the white-box attacks; default: every name that is not
            black-box and not an aggregate (``autoattack``, ``worst``, ``ensemble``, ``clean``).
        black_box: Names (prefixes) of the black-box attacks.
        margin: Accuracy difference (fraction) tolerated before the flag fires.
    """
    accs = {str(k): _check_fraction(v, f"per_attack_acc[{k!r}]") for k, v in per_attack_acc.items()}
    margin = _check_tolerance(margin, "margin")
    blacks = {k: v for k, v in accs.items() if _matches(k, black_box)}
    if white_box is None:
        whites = {
            k: v for k, v in accs.items() if k not in blacks and not _matches(k, AGGREGATE_NAMES)
        }
    else:
        whites = {k: v for k, v in accs.items() if _matches(k, white_box) and k not in blacks}
    if not blacks or not whites:
        return SanityFlag(
            BLACK_BOX_BEATS_WHITE_BOX,
            False,
            "Not checked: needs at least one white-box and one black-box (e.g. Square) result.",
            "",
            {"checked": False, "white_box": sorted(whites), "black_box": sorted(blacks)},
        )
    best_white = min(whites, key=whites.__getitem__)
    best_black = min(blacks, key=blacks.__getitem__)
    gap = whites[best_white] - blacks[best_black]
    details = {
        "checked": True,
        "white_box": whites,
        "black_box": blacks,
        "best_white_box": best_white,
        "best_black_box": best_black,
        "gap": gap,
        "margin": margin,
    }
    if gap > margin:
        return SanityFlag(
            BLACK_BOX_BEATS_WHITE_BOX,
            True,
            f"The black-box attack {best_black} ({blacks[best_black]:.1%} robust accuracy) beats "
            f"the best white-box attack {best_white} ({whites[best_white]:.1%}) by "
            f"{gap:.1%}. A gradient-free search should not beat attacks that see the gradients: "
            "the model is very likely masking its gradients, and white-box numbers overstate "
            "its robustness.",
            "Trust the lowest number (the worst case over all attacks), run Square with more "
            "queries and restarts, check the zero-gradient and randomness flags, and build an "
            "adaptive attack (BPDA for non-differentiable layers, EoT for randomness).",
            details,
        )
    return SanityFlag(
        BLACK_BOX_BEATS_WHITE_BOX,
        False,
        f"White-box attacks are at least as strong as black-box ones (gap {gap:.1%}).",
        "",
        details,
    )


def check_eps_curve(
    eps_grid_acc: Mapping[float, float],
    clean_acc: float | None = None,
    tol: float = 0.01,
) -> SanityFlag:
    """Fires if robust accuracy rises with eps beyond ``tol``.

    Balls grow with eps, so robust accuracy can only fall (or stay): an increase means the attack
    failed at the larger eps (too few steps, a step size that does not scale with eps, gradient
    masking). The clean accuracy, if given, is the value at eps = 0.

    Args:
        eps_grid_acc: Robust accuracy (fraction) per eps, on the same examples.
        clean_acc: Clean accuracy (fraction) on those examples.
        tol: Increase (fraction) tolerated between any smaller and larger eps.
    """
    eps_grid_acc = _check_mapping(eps_grid_acc, "eps_grid_acc")
    tol = _check_tolerance(tol, "tol")
    points: dict[float, float] = {}
    for eps, acc in eps_grid_acc.items():
        e = float(eps)
        if not (math.isfinite(e) and e >= 0):
            raise ValueError(f"eps_grid_acc keys must be radii >= 0, got {eps!r}")
        points[e] = _check_fraction(acc, f"eps_grid_acc[{eps!r}]")
    if clean_acc is not None and 0.0 not in points:
        points[0.0] = _check_fraction(clean_acc, "clean_acc")
    grid = sorted(points.items())
    violations = []
    lowest_eps, lowest = grid[0] if grid else (0.0, 1.0)
    for eps, acc in grid[1:]:
        if acc > lowest + tol:
            violations.append(
                {"eps": eps, "acc": acc, "smaller_eps": lowest_eps, "acc_at_smaller": lowest}
            )
        if acc < lowest:
            lowest_eps, lowest = eps, acc
    details = {"curve": [[e, a] for e, a in grid], "violations": violations, "tol": tol}
    if violations:
        v = max(violations, key=lambda d: d["acc"] - d["acc_at_smaller"])
        return SanityFlag(
            NON_MONOTONE_EPS_CURVE,
            True,
            f"Robust accuracy does not fall as eps grows: {v['acc']:.1%} at eps={v['eps']:g} "
            f"but {v['acc_at_smaller']:.1%} at the smaller eps={v['smaller_eps']:g}. Every "
            "perturbation allowed at a small eps is allowed at a larger one, so the attack is "
            "failing at the larger radius and the numbers there are too high.",
            "Scale the step size with eps (alpha proportional to eps), use more steps and "
            "restarts or a parameter-free attack (APGD/AutoAttack), and check the gradient "
            "masking flags.",
            details,
        )
    return SanityFlag(
        NON_MONOTONE_EPS_CURVE,
        False,
        "Robust accuracy does not increase with eps."
        if len(grid) > 1
        else "Not checked: needs at least two eps values.",
        "",
        details,
    )


def check_eps_zero(
    eps_grid_acc: Mapping[float, float],
    clean_acc: float,
    tol: float = 1e-3,
) -> SanityFlag:
    """Fires if the robust accuracy at eps = 0 differs from the clean accuracy by more than ``tol``.

    At eps = 0 an attack cannot change the input, so any difference means the evaluation is
    inconsistent: a randomised model, different examples or preprocessing for clean and robust
    accuracy, or an attack that leaves the ball.
    """
    eps_grid_acc = _check_mapping(eps_grid_acc, "eps_grid_acc")
    clean = _check_fraction(clean_acc, "clean_acc")
    tol = _check_tolerance(tol, "tol")
    zero = [v for k, v in eps_grid_acc.items() if float(k) == 0.0]
    if not zero:
        return SanityFlag(
            EPS_ZERO_NOT_CLEAN,
            False,
            "Not checked: the eps grid has no eps = 0.",
            "",
            {"checked": False},
        )
    acc0 = _check_fraction(zero[0], "eps_grid_acc[0]")
    details = {"checked": True, "acc_at_eps_0": acc0, "clean_acc": clean, "tol": tol}
    if abs(acc0 - clean) > tol:
        return SanityFlag(
            EPS_ZERO_NOT_CLEAN,
            True,
            f"Robust accuracy at eps = 0 is {acc0:.1%} but clean accuracy is {clean:.1%}. At "
            "eps = 0 no perturbation is possible, so the two must agree: the model is randomised, "
            "or clean and robust accuracy were measured on different examples or with different "
            "preprocessing or model modes.",
            "Evaluate clean and robust accuracy on the same examples with the model in the same "
            "mode (eval), and check the randomised-model flag.",
            details,
        )
    return SanityFlag(
        EPS_ZERO_NOT_CLEAN, False, "Robust accuracy at eps = 0 equals clean accuracy.", "", details
    )


def check_results(
    clean_acc: float,
    per_attack_acc: Mapping[str, float],
    eps_grid_acc: Mapping[float, float] | None = None,
    white_box: Sequence[str] | None = None,
    black_box: Sequence[str] = ("square",),
    margin: float = 0.03,
    monotone_tol: float = 0.01,
    eps_zero_tol: float = 1e-3,
) -> list[SanityFlag]:
    """Checks evaluation results: black-box vs white-box, the eps curve, eps = 0 vs clean.

    Args:
        clean_acc: Clean accuracy (fraction) on the evaluated examples.
        per_attack_acc: Robust accuracy per attack name at the evaluation eps.
        eps_grid_acc: Optional robust accuracy (worst case over attacks) per eps.
        white_box: White-box attack names (prefixes); see :func:`check_black_box`.
        black_box: Black-box attack names (prefixes).
        margin: Tolerated black-box advantage (fraction).
        monotone_tol: Tolerated increase of robust accuracy with eps (fraction).
        eps_zero_tol: Tolerated difference between accuracy at eps = 0 and clean accuracy.

    Returns:
        ``[black_box_beats_white_box]`` plus, with an eps grid, ``non_monotone_eps_curve`` and
        ``eps_zero_not_clean``.
    """
    clean = _check_fraction(clean_acc, "clean_acc")
    per_attack_acc = _check_mapping(per_attack_acc, "per_attack_acc")
    flags = [check_black_box(per_attack_acc, white_box, black_box, margin)]
    if eps_grid_acc is not None:
        flags.append(check_eps_curve(eps_grid_acc, clean, monotone_tol))
        flags.append(check_eps_zero(eps_grid_acc, clean, eps_zero_tol))
    return flags


def run_sanity_checks(
    model: nn.Module | None = None,
    x: Tensor | None = None,
    y: Tensor | None = None,
    clean_acc: float | None = None,
    per_attack_acc: Mapping[str, float] | None = None,
    eps_grid_acc: Mapping[float, float] | None = None,
    bn_mode: BNMode = "eval",
    **options: Any,
) -> list[SanityFlag]:
    """Runs every check the given information allows: model checks and result checks.

    Args:
        model: The classifier (with ``x`` and ``y``) for :func:`check_model`.
        x: A batch of inputs.
        y: Their labels.
        clean_acc: Clean accuracy (with ``per_attack_acc``) for :func:`check_results`.
        per_attack_acc: Robust accuracy per attack name.
        eps_grid_acc: Optional robust accuracy per eps.
        bn_mode: The mode the evaluation runs the model in.
        **options: Passed on: ``grad_tol``, ``max_zero_grad_fraction`` (model checks);
            ``white_box``, ``black_box``, ``margin``, ``monotone_tol``, ``eps_zero_tol``.

    Returns:
        All flags computed, fired or not; see :func:`triggered` and :func:`format_flags`.

    Raises:
        ValueError: If neither a model batch nor results are given, or an option is unknown.
    """
    model_keys = {"grad_tol", "max_zero_grad_fraction"}
    result_keys = {"white_box", "black_box", "margin", "monotone_tol", "eps_zero_tol"}
    unknown = set(options) - model_keys - result_keys
    if unknown:
        raise ValueError(
            f"unknown sanity-check options {sorted(unknown)}; valid: "
            f"{sorted(model_keys | result_keys)}"
        )
    have_model = model is not None
    have_results = per_attack_acc is not None
    if have_model and (x is None or y is None):
        raise ValueError("model checks need a batch: pass x and y together with model")
    if have_results and clean_acc is None:
        raise ValueError("result checks need clean_acc together with per_attack_acc")
    if not have_model and not have_results:
        raise ValueError(
            "nothing to check: pass model, x, y (model checks) and/or clean_acc, per_attack_acc "
            "(result checks)"
        )
    flags: list[SanityFlag] = []
    if have_model:
        assert x is not None and y is not None and model is not None
        flags += check_model(
            model, x, y, bn_mode=bn_mode, **{k: v for k, v in options.items() if k in model_keys}
        )
    if have_results:
        assert per_attack_acc is not None and clean_acc is not None
        flags += check_results(
            clean_acc,
            per_attack_acc,
            eps_grid_acc,
            **{k: v for k, v in options.items() if k in result_keys},
        )
    elif eps_grid_acc is not None and clean_acc is not None:
        flags.append(check_eps_curve(eps_grid_acc, clean_acc, options.get("monotone_tol", 0.01)))
        flags.append(check_eps_zero(eps_grid_acc, clean_acc, options.get("eps_zero_tol", 1e-3)))
    return flags


__all__ = [
    "BLACK_BOX_BEATS_WHITE_BOX",
    "EPS_ZERO_NOT_CLEAN",
    "NON_MONOTONE_EPS_CURVE",
    "PROBABILITY_OUTPUTS",
    "RANDOMIZED_MODEL",
    "ZERO_GRADIENTS",
    "SanityFlag",
    "check_black_box",
    "check_eps_curve",
    "check_eps_zero",
    "check_gradients",
    "check_model",
    "check_probability_outputs",
    "check_randomized",
    "check_results",
    "format_flags",
    "run_sanity_checks",
    "triggered",
]
