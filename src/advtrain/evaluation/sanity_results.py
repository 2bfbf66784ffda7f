"""Sanity checks on evaluation results: black-box vs white-box attacks, the eps curve, eps = 0.

The result half of the warning signs of :mod:`advtrain.evaluation.sanity` (Carlini et al.,
"On Evaluating Adversarial Robustness", 2019: a black-box attack beating the white-box ones, robust
accuracy not falling with eps; Croce & Hein, ICML 2020: Square improving on the white-box attacks),
and :func:`run_sanity_checks`, which runs every check the given information allows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from advtrain.evaluation.sanity import (
    AGGREGATE_NAMES,
    BLACK_BOX_BEATS_WHITE_BOX,
    EPS_ZERO_NOT_CLEAN,
    NON_MONOTONE_EPS_CURVE,
    BNMode,
    SanityFlag,
    check_fraction,
    check_mapping,
    check_model,
    check_tolerance,
)


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
    accs = {str(k): check_fraction(v, f"per_attack_acc[{k!r}]") for k, v in per_attack_acc.items()}
    margin = check_tolerance(margin, "margin")
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
    eps_grid_acc = check_mapping(eps_grid_acc, "eps_grid_acc")
    tol = check_tolerance(tol, "tol")
    points: dict[float, float] = {}
    for eps, acc in eps_grid_acc.items():
        e = float(eps)
        if not (math.isfinite(e) and e >= 0):
            raise ValueError(f"eps_grid_acc keys must be radii >= 0, got {eps!r}")
        points[e] = check_fraction(acc, f"eps_grid_acc[{eps!r}]")
    if clean_acc is not None and 0.0 not in points:
        points[0.0] = check_fraction(clean_acc, "clean_acc")
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
    eps_grid_acc = check_mapping(eps_grid_acc, "eps_grid_acc")
    clean = check_fraction(clean_acc, "clean_acc")
    tol = check_tolerance(tol, "tol")
    zero = [v for k, v in eps_grid_acc.items() if float(k) == 0.0]
    if not zero:
        return SanityFlag(
            EPS_ZERO_NOT_CLEAN,
            False,
            "Not checked: the eps grid has no eps = 0.",
            "",
            {"checked": False},
        )
    acc0 = check_fraction(zero[0], "eps_grid_acc[0]")
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
    clean = check_fraction(clean_acc, "clean_acc")
    per_attack_acc = check_mapping(per_attack_acc, "per_attack_acc")
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
    "check_black_box",
    "check_eps_curve",
    "check_eps_zero",
    "check_results",
    "run_sanity_checks",
]
