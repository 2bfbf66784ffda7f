"""The result sections of ``report.json``, assembled from an evaluation's :class:`Outcome`.

Every caller of the pipeline (``advtrain-eval``, ``advtrain-train``'s final evaluation) writes
these sections the same way, so one schema (:mod:`advtrain.report.schema`) and one set of
renderers serve every report. The caller adds the provenance (checkpoint, data and config hashes,
environment) around them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from advtrain.evaluation.flags import sanity_section
from advtrain.evaluation.pipeline import (
    Outcome,
    effective_min_norm,
    fraction,
    grid_worst_case,
    worst_case,
)
from advtrain.evaluation.plan import EvaluationPlan
from advtrain.metrics.certified import certified_accuracy


def per_class(labels: Tensor, masks: Mapping[str, Tensor], num_classes: int) -> dict[str, Any]:
    """Support and accuracy of each class under each mask (``None`` for a class with no
    example)."""
    support = torch.bincount(labels, minlength=num_classes)
    acc: dict[str, list[float | None]] = {}
    for name, mask in masks.items():
        hits = torch.bincount(labels[mask], minlength=num_classes)
        acc[name] = [
            float(h) / float(s) if int(s) > 0 else None
            for h, s in zip(hits.tolist(), support.tolist(), strict=True)
        ]
    return {"classes": list(range(num_classes)), "support": support.tolist(), "accuracy": acc}


def _attack_entries(out: Outcome, plan: EvaluationPlan) -> dict[str, Any]:
    main = out.robust[plan.threat.eps]
    entries: dict[str, Any] = {}
    for name, attack in plan.attacks.items():
        spec = plan.specs.get(name, {})
        entry: dict[str, Any] = {
            "target": str(spec.get("_target_", type(attack).__qualname__)),
            "params": {k: v for k, v in spec.items() if k != "_target_"},
            "description": repr(attack),
            "accuracy": fraction(main[name]),
            "correct": int(main[name].sum()),
            "seconds": out.attack_seconds.get(name, 0.0),
        }
        if name in out.protocols:
            entry["protocol"] = out.protocols[name]
        if name in out.members:
            entry["members"] = [
                {"name": m, "accuracy_after": fraction(mask), "correct_after": int(mask.sum())}
                for m, mask in out.members[name].items()
            ]
        entries[name] = entry
    if out.min_norm is not None:
        name = plan.min_norm_name
        spec = plan.min_norm_spec
        entries[name] = {
            "target": str(spec.get("_target_", type(plan.min_norm).__qualname__)),
            "params": {k: v for k, v in spec.items() if k != "_target_"},
            "description": repr(plan.min_norm) + " (minimum norm; also the eps curve)",
            "accuracy": fraction(main[name]),
            "correct": int(main[name].sum()),
            "seconds": out.attack_seconds.get(name, 0.0),
        }
    return entries


def _eps_grid(out: Outcome, plan: EvaluationPlan) -> dict[str, Any]:
    names = list(plan.grid_attacks or [])
    acc: dict[str, list[float]] = {name: [] for name in names}
    for eps in plan.grid_eps:
        for name in names:
            acc[name].append(fraction(out.robust[eps][name]))
    acc["worst_case"] = list(grid_worst_case(out, plan).values())
    grid = {"factors": plan.grid_factors, "eps": plan.grid_eps, "attacks": names, "accuracy": acc}
    if out.min_norm is not None:
        norms = effective_min_norm(out, plan)[out.clean]
        finite = norms[torch.isfinite(norms)]
        grid["min_norm"] = {
            "attack": plan.min_norm_name,
            "capped_by": [n for n in out.robust[plan.threat.eps] if n != plan.min_norm_name],
            # None where no example or where over half of them had no adversarial point found
            "median": float(norms.median())
            if norms.numel() and bool(torch.isfinite(norms.median()))
            else None,
            "found": int(finite.numel()),
        }
    return grid


def _curve_label(grid: Mapping[str, Any], plan: EvaluationPlan) -> str:
    """What the eps curve measures, for the report and the figure."""
    parts = []
    if grid.get("min_norm"):
        parts.append(
            f"minimum-norm {grid['min_norm']['attack']} (one run; at eps >= {plan.threat.eps:g} "
            "at most the worst case of " + ", ".join(grid["min_norm"]["capped_by"]) + ")"
        )
    if grid["attacks"]:
        parts.append("worst case of " + ", ".join(grid["attacks"]))
    return " and ".join(parts)


def _smoothing(out: Outcome, plan: EvaluationPlan) -> dict[str, Any] | None:
    s = plan.smoothing
    if s is None or out.smoothing is None:
        return None
    pred, radius = out.smoothing["predict"], out.smoothing["radius"]
    target = out.labels[: pred.numel()]
    radii = [float(r) for r in s.radii]
    top = max([*radii, float(radius.max()) if radius.numel() else 0.0]) * 1.05 or 1.0
    curve_r = [top * i / 127 for i in range(128)]

    def counts(at: Sequence[float]) -> list[int]:
        if not pred.numel():
            return [0] * len(at)
        acc = certified_accuracy(pred, radius, target, list(at))  # float32 fractions
        return [round(float(a) * pred.numel()) for a in acc]

    def acc(at: Sequence[float]) -> list[float]:
        n = pred.numel()
        return [c / n if n else float("nan") for c in counts(at)]

    return {
        "sigma": s.sigma,
        "n0": s.n0,
        "n": s.n,
        "alpha": s.alpha,
        "seed": plan.seed,
        "radii": radii,
        "accuracy": acc(radii),
        "counts": counts(radii),
        "n_examples": int(pred.numel()),
        "abstain_rate": fraction(pred == -1),
        "curve": {"radius": curve_r, "accuracy": acc(curve_r)},
        "at_threat_eps": acc([plan.threat.eps])[0] if plan.threat.norm == "l2" else None,
        "seconds": out.seconds.get("smoothing", 0.0),
    }


def _certified(out: Outcome, plan: EvaluationPlan, worst: float | None) -> dict[str, Any]:
    smoothing = _smoothing(out, plan)
    eps = plan.threat.eps
    summary: dict[str, float | None] = {}
    candidates: list[tuple[str, float]] = []
    for method, res in out.bounds.items():
        if res["supported"]:
            summary[f"{method} @ eps={eps:.4g}"] = res["at_threat_eps"]
            candidates.append((method, res["at_threat_eps"]))
    if smoothing:
        for r, a in zip(smoothing["radii"], smoothing["accuracy"], strict=True):
            summary[f"smoothing σ={smoothing['sigma']:g} @ r={r:g}"] = a
        if smoothing["at_threat_eps"] is not None:
            candidates.append(("smoothing", smoothing["at_threat_eps"]))
    best_name, best = None, None
    for name, value in candidates:  # the first of equals wins, as listed
        if best is None or value > best:
            best_name, best = name, value
    gap = {
        "eps": eps,
        "empirical": worst,
        "certified": best,
        "certificate": best_name,
        "gap": None if best is None or worst is None else worst - best,
    }
    return {"summary": summary, "bounds": out.bounds, "smoothing": smoothing, "gap": gap}


def report_sections(
    out: Outcome, plan: EvaluationPlan, extra_flags: Sequence[Mapping[str, Any]] = ()
) -> dict[str, Any]:
    """The result sections of a report: accuracies and counts, attacks, the eps grid and curve,
    per-class accuracy, certificates and the sanity verdict (with ``extra_flags`` the caller
    raised, e.g. :func:`~advtrain.evaluation.flags.contamination_flag`)."""
    main = out.robust[plan.threat.eps]
    worst = worst_case(out.clean, main)
    n = int(out.labels.numel())
    robust = {name: fraction(mask) for name, mask in main.items()}
    counts = {"n": n, "clean": int(out.clean.sum())}
    counts.update({name: int(mask.sum()) for name, mask in main.items()})
    masks = {"clean": out.clean, **main}
    if main:  # the worst case over no attack would be the clean accuracy: not reported
        robust["worst_case"] = fraction(worst)
        counts["worst_case"] = int(worst.sum())
        masks["worst_case"] = worst
    grid = _eps_grid(out, plan)
    return {
        "clean_accuracy": fraction(out.clean),
        "robust_accuracy": robust,
        "counts": counts,
        "threat_model": plan.threat_dict(),
        "n_examples": n,
        "attacks": _attack_entries(out, plan),
        "eps_curve": [
            {"eps": e, "accuracy": a}
            for e, a in zip(grid["eps"], grid["accuracy"]["worst_case"], strict=True)
        ],
        "eps_curve_attack": _curve_label(grid, plan),
        "eps_grid": grid,
        "per_class": per_class(out.labels, masks, out.num_classes),
        "certified": _certified(out, plan, robust.get("worst_case")),
        "sanity": sanity_section(
            [*out.flags, *extra_flags], plan.sanity.enabled, out.model_check_examples
        ),
    }


__all__ = ["per_class", "report_sections"]
