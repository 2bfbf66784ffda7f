"""One evaluation pipeline for every caller: clean pass, attacks along the eps grid, certificates,
sanity checks.

:func:`run_evaluation` carries out an :class:`~advtrain.evaluation.plan.EvaluationPlan` on a set
of examples and returns an :class:`Outcome` of per-example masks; the report sections are
assembled from it by :func:`advtrain.evaluation.report.report_sections`. ``advtrain-eval``, the
final evaluation of ``advtrain-train`` and the evaluation callbacks all go through here, so their
numbers and their reports mean the same thing. The model is never modified.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from advtrain.evaluation.flags import WHITE_BOX_UNTRUSTED
from advtrain.evaluation.plan import EvaluationPlan, eps_key
from advtrain.evaluation.units import (
    MemoryStore,
    UnitRunner,
    attack_unit,
    bounds_support,
    bounds_unit,
    smoothing_unit,
)

Batch = Callable[..., tuple[Tensor, Tensor]]


def fraction(mask: Tensor) -> float:
    """The fraction of ``True`` in ``mask`` (NaN for an empty mask)."""
    return float(mask.sum()) / mask.numel() if mask.numel() else float("nan")


def _cat(results: list[dict[str, Any]], key: str) -> Tensor:
    return torch.cat([r[key] for r in results])


@dataclass
class Outcome:
    """Per-example results of :func:`run_evaluation` (boolean masks on the CPU).

    Attributes:
        labels: ``(n,)`` labels of the evaluated examples.
        num_classes: The model's number of outputs.
        batches: The batch indices (units of ``plan.batch_size`` examples).
        clean: Correct without attack.
        robust: eps → attack name → correct clean and after the attack.
        members: Ensemble attack → member → correct after the members up to it (cumulative).
        attack_seconds: Compute time of each attack at the threat model's eps.
        protocols: ``"rapid"`` AutoAttacks: whether and why they escalated to the standard one.
        bounds: Bound method → its report entry (accuracy per eps, or why it is not supported).
        smoothing: Randomized smoothing: predictions, radii and how many examples.
        min_norm: The minimum-norm attack's smallest adversarial norm per example (``inf``:
            none found), before the cap at the threat model's eps (:func:`effective_min_norm`).
        flags: Sanity flags (dictionaries of :class:`~advtrain.evaluation.sanity.SanityFlag`).
        model_check_examples: Examples the model checks used.
        seconds: Compute time per phase.
    """

    labels: Tensor
    num_classes: int
    batches: list[int]
    clean: Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.bool))
    robust: dict[float, dict[str, Tensor]] = field(default_factory=dict)
    members: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    attack_seconds: dict[str, float] = field(default_factory=dict)
    protocols: dict[str, dict[str, Any]] = field(default_factory=dict)
    bounds: dict[str, Any] = field(default_factory=dict)
    smoothing: dict[str, Tensor] | None = None
    min_norm: Tensor | None = None
    flags: list[dict[str, Any]] = field(default_factory=list)
    model_check_examples: int = 0
    seconds: dict[str, float] = field(default_factory=dict)


def _model_flags(model: nn.Module, x: Tensor, y: Tensor) -> list[dict[str, Any]]:
    from advtrain.evaluation.sanity import check_model

    try:
        return [f.to_dict() for f in check_model(model, x, y)]
    except (RuntimeError, ValueError, TypeError) as exc:
        return [
            {
                "code": "model_checks_failed",
                "triggered": True,
                "message": f"The model checks could not run ({exc}); input gradients may not be "
                "computable, so gradient-based attacks may not work on this model.",
                "advice": "Make sure the model is differentiable end to end (no detach, no "
                "torch.no_grad inside forward), or evaluate it with black-box attacks only.",
                "details": {},
            }
        ]


def _protocol(attack: Any, flags: list[dict[str, Any]]) -> tuple[Any, str | None]:
    """The attack to run: a ``"rapid"`` AutoAttack escalates to the standard version at once
    when a model check says white-box attacks cannot be trusted."""
    if getattr(attack, "version", None) != "rapid":
        return attack, None
    fired = [f["code"] for f in flags if f["triggered"] and f["code"] in WHITE_BOX_UNTRUSTED]
    if fired:
        return attack.escalated(), f"sanity flags fired ({', '.join(fired)})"
    return attack, None


def _attack_phase(
    model: nn.Module,
    plan: EvaluationPlan,
    runner: UnitRunner,
    xb: Batch,
    spec: tuple[str, Any, float, str],
    batches: list[int],
) -> list[dict[str, Any]]:
    name, attack, eps, suffix = spec
    return runner.phase(
        f"attack/{name}{suffix}/eps={eps_key(eps)}",
        batches,
        lambda b: attack_unit(model, attack, name, eps, *xb(b), first_id=b * plan.batch_size),
        f"{name}{suffix} eps={eps:.4g}",
        "attacks",
    )


def _run_attack(
    model: nn.Module,
    plan: EvaluationPlan,
    runner: UnitRunner,
    xb: Batch,
    out: Outcome,
    name: str,
    eps: float,
) -> tuple[list[dict[str, Any]], Tensor, dict[str, Any] | None]:
    """One attack at ``eps`` on every batch. A ``"rapid"`` AutoAttack whose Square check fired on
    some batch escalated there to the standard version's Square (all its queries, in rings of the
    closest calls); the other batches run the protocol again with the escalation forced, so no
    example is judged by the cheap protocol alone once a black-box attack is known to find what
    the white-box ones miss."""
    attack, reason = _protocol(plan.attacks[name], out.flags)
    everything = list(range(len(out.batches)))
    results = _attack_phase(model, plan, runner, xb, (name, attack, eps, ""), everything)
    parts = [r["robust"] for r in results]
    fired = {b for b, r in enumerate(results) if r.get("escalated")}
    coverage = [r.get("escalation_coverage", 0.0) for r in results]
    if fired:
        reason = reason or (
            f"the Square check fooled examples the white-box members missed in {len(fired)} of "
            f"{len(results)} batches"
        )
        rest = [b for b in everything if b not in fired]
        spec = (name, attack.escalation_attack(), eps, "/escalated")
        for b, r in zip(rest, _attack_phase(model, plan, runner, xb, spec, rest), strict=True):
            parts[b] = parts[b] & r["robust"]
            coverage[b] = r.get("escalation_coverage", 0.0)
            members = results[b].get("members")
            if members:  # the forced run's members replace the unforced ones
                for m in members:
                    members[m] = members[m] & r["members"][m]
    protocol = None
    if getattr(plan.attacks[name], "version", None) == "rapid":
        protocol = {"version": "rapid", "escalated": reason is not None, "reason": reason}
        if fired:
            protocol["escalation_coverage"] = max(coverage)
    return results, torch.cat(parts), protocol


def _attacks(
    model: nn.Module, plan: EvaluationPlan, runner: UnitRunner, xb: Batch, out: Outcome
) -> None:
    """Every attack at the threat model's eps, the grid attacks at the other grid eps."""
    for eps in plan.eps_list:
        main = eps == plan.threat.eps
        names = list(plan.attacks) if main else list(plan.grid_attacks or [])
        out.robust[eps] = {}
        for name in names:
            before = runner.seconds.get("attacks", 0.0)
            results, robust, protocol = _run_attack(model, plan, runner, xb, out, name, eps)
            out.robust[eps][name] = robust & out.clean
            if main:
                out.attack_seconds[name] = runner.seconds.get("attacks", 0.0) - before
                if protocol is not None:
                    out.protocols[name] = protocol
                if results and "members" in results[0]:
                    out.members[name] = {
                        m: torch.cat([r["members"][m] for r in results]) & out.clean
                        for m in results[0]["member_names"]
                    }


def _min_norm(
    model: nn.Module, plan: EvaluationPlan, runner: UnitRunner, xb: Batch, out: Outcome
) -> None:
    """The minimum-norm attack's smallest adversarial norm for every example (one run). At the
    threat model's eps it counts as one more attack: a point it found within eps is adversarial
    whatever the main attacks missed, so the worst case includes it."""
    attack, name, eps = plan.min_norm, plan.min_norm_name, plan.threat.eps

    def unit(b: int) -> dict[str, Any]:
        xs, ys = xb(b)
        return {"norm": attack.min_norm(model, xs, ys).double().cpu()}

    before = runner.seconds.get("min_norm", 0.0)
    results = runner.phase(f"min_norm/{name}", out.batches, unit, f"{name} (curve)", "min_norm")
    out.min_norm = _cat(results, "norm")
    out.robust[eps][name] = out.clean & robust_beyond(out.min_norm, eps)
    out.attack_seconds[name] = runner.seconds.get("min_norm", 0.0) - before


def effective_min_norm(out: Outcome, plan: EvaluationPlan) -> Tensor:
    """Each example's smallest adversarial norm known: the minimum-norm attack's, capped at
    ``threat.eps`` where the main attacks fooled the example there (0 where it is wrong clean).

    So the curve at and beyond the threat model's eps is never above the main attacks' worst case.
    """
    assert out.min_norm is not None
    fooled = out.clean & ~worst_case(out.clean, out.robust[plan.threat.eps])
    norms = torch.where(fooled, out.min_norm.clamp(max=plan.threat.eps), out.min_norm)
    return torch.where(out.clean, norms, torch.zeros_like(norms))


def robust_beyond(norms: Tensor, eps: float) -> Tensor:
    """No adversarial point within ``eps`` (a relative 1e-6 of float error counts as within)."""
    return norms > eps * (1 + 1e-6)


def _bounds(
    model: nn.Module, plan: EvaluationPlan, runner: UnitRunner, xb: Batch, out: Outcome
) -> None:
    """Verified accuracy of every bound method at its eps (or why the model is not supported)."""
    for method in plan.bound_methods:
        reason = bounds_support(model, method, *xb(0), plan.threat)
        if reason is not None:
            out.bounds[method] = {"supported": False, "reason": reason}
            continue
        accs, counts = [], []
        before = runner.seconds.get(f"bounds_{method}", 0.0)
        for eps in plan.bound_eps:
            results = runner.phase(
                f"bounds/{method}/eps={eps_key(eps)}",
                range(len(out.batches)),
                lambda b, method=method, eps=eps: bounds_unit(
                    model, method, eps, *xb(b), plan.threat, plan.bounds_batch_size
                ),
                f"{method} eps={eps:.4g}",
                f"bounds_{method}",
            )
            verified = _cat(results, "verified") & out.clean
            accs.append(fraction(verified))
            counts.append(int(verified.sum()))
        out.bounds[method] = {
            "supported": True,
            "reason": None,
            "eps": plan.bound_eps,
            "accuracy": accs,
            "counts": counts,
            "at_threat_eps": accs[plan.bound_eps.index(plan.threat.eps)],
            "seconds": runner.seconds.get(f"bounds_{method}", 0.0) - before,
        }


def _smoothing(
    model: nn.Module, plan: EvaluationPlan, runner: UnitRunner, xb: Batch, out: Outcome
) -> None:
    """CERTIFY on the first ``smoothing.n_examples`` examples (seeded per batch)."""
    s = plan.smoothing
    assert s is not None
    n = int(out.labels.numel())
    k = n if s.n_examples is None else min(n, int(s.n_examples))
    results = runner.phase(
        f"smoothing/sigma={eps_key(s.sigma)}",
        range(-(-k // plan.batch_size)),
        lambda b: smoothing_unit(model, out.num_classes, s, plan.seed + b, xb(b, k)[0]),
        f"smoothing σ={s.sigma:g}",
        "smoothing",
    )
    out.smoothing = {"predict": _cat(results, "predict"), "radius": _cat(results, "radius")}


def result_flags(out: Outcome, plan: EvaluationPlan) -> list[dict[str, Any]]:
    """Black-box vs white-box, the eps curve and eps = 0 (:func:`check_results`)."""
    from advtrain.evaluation.sanity_results import check_results

    main = out.robust[plan.threat.eps]
    per_attack: dict[str, float] = {}
    for name, mask in main.items():
        if name in out.members:
            for member, after in out.members[name].items():
                per_attack[member if member not in per_attack else f"{member}@{name}"] = fraction(
                    after
                )
        else:
            per_attack[name] = fraction(mask)
    has_curve = plan.grid_attacks or out.min_norm is not None
    grid = grid_worst_case(out, plan) if plan.grid_eps and has_curve else None
    flags = check_results(fraction(out.clean), per_attack, grid, margin=plan.sanity.margin)
    if out.min_norm is not None:
        flags.append(min_norm_flag(out, plan))
    return [f.to_dict() for f in flags]


def min_norm_flag(out: Outcome, plan: EvaluationPlan) -> Any:
    """Fires when the minimum-norm attack alone leaves more examples robust at the threat model's
    eps than the main attacks (by more than the sanity margin): beyond that eps, where nothing
    caps it, the curve may then be too high as well."""
    from advtrain.evaluation.sanity import SanityFlag

    eps = plan.threat.eps
    alone = fraction(out.clean & robust_beyond(out.min_norm, eps))  # type: ignore[arg-type]
    others = {n: m for n, m in out.robust[eps].items() if n != plan.min_norm_name}
    main = fraction(worst_case(out.clean, others))
    weak = alone - main > plan.sanity.margin
    details = {"eps": eps, "min_norm_accuracy": alone, "main_accuracy": main}
    if not weak:
        return SanityFlag(
            "weak_min_norm_curve",
            False,
            f"At eps={eps:g} the minimum-norm attack alone ({alone:.1%}) agrees with the main "
            f"attacks ({main:.1%}) within {plan.sanity.margin:.0%}.",
            details=details,
        )
    return SanityFlag(
        "weak_min_norm_curve",
        True,
        f"At eps={eps:g} the minimum-norm attack alone leaves {alone:.1%} robust, the main "
        f"attacks {main:.1%}: it misses adversarial points they find, so the eps curve beyond "
        f"eps={eps:g} (where nothing caps it) may overstate robustness.",
        "Give the minimum-norm attack more steps (eps_grid.min_norm.steps), or measure the curve "
        "with attacks at each eps (eps_grid.min_norm: null, eps_grid.attacks: [apgd-ce]).",
        details,
    )


def grid_worst_case(out: Outcome, plan: EvaluationPlan) -> dict[float, float]:
    """Accuracy under the worst case of the grid attacks (only those) at every grid eps: the
    eps curve of the report and of the sanity checks."""
    names = plan.grid_attacks or []
    norms = effective_min_norm(out, plan) if out.min_norm is not None else None
    curve = {}
    for eps in plan.grid_eps:
        mask = worst_case(out.clean, {n: out.robust[eps][n] for n in names})
        if norms is not None:
            mask &= robust_beyond(norms, eps)
        curve[eps] = fraction(mask)
    return curve


def worst_case(clean: Tensor, masks: Mapping[str, Tensor]) -> Tensor:
    """Correct clean and after every attack in ``masks``."""
    worst = clean.clone()
    for mask in masks.values():
        worst &= mask
    return worst


def run_evaluation(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    plan: EvaluationPlan,
    runner: UnitRunner | None = None,
    num_classes: int | None = None,
) -> Outcome:
    """Carries out ``plan`` on the examples ``(x, y)``.

    Args:
        model: The classifier (logits), in eval mode on its device; never modified.
        x: Inputs in the threat model's units (pixels), on any device.
        y: Labels.
        plan: What to run.
        runner: Runs and stores the units (default: in memory, not resumable).
        num_classes: The number of classes (default: the model's number of outputs).

    Returns:
        The per-example :class:`Outcome`.
    """
    runner = runner or UnitRunner(MemoryStore(), plan.seed)
    device = next((p.device for p in model.parameters()), x.device)
    n, bs = int(y.numel()), plan.batch_size

    def xb(b: int, count: int | None = None) -> tuple[Tensor, Tensor]:
        lo = b * bs
        hi = min(lo + bs, n if count is None else count)
        return x[lo:hi].to(device), y[lo:hi].to(device)

    with torch.no_grad():
        k_out = int(model(x[:1].to(device)).shape[1])
    out = Outcome(y.cpu(), num_classes or k_out, list(range(-(-n // bs))))
    if plan.sanity.enabled:
        t0 = time.perf_counter()
        out.model_check_examples = k = min(n, plan.sanity.n_examples)
        out.flags += _model_flags(model, x[:k].to(device), y[:k].to(device))
        out.seconds["sanity"] = time.perf_counter() - t0

    def clean_unit(b: int) -> dict[str, Any]:
        xs, ys = xb(b)
        with torch.no_grad():
            return {"clean": (model(xs).argmax(1) == ys).cpu()}

    out.clean = _cat(runner.phase("clean", out.batches, clean_unit, "clean", "clean"), "clean")
    _attacks(model, plan, runner, xb, out)
    if plan.min_norm is not None:
        _min_norm(model, plan, runner, xb, out)
    _bounds(model, plan, runner, xb, out)
    if plan.smoothing is not None:
        _smoothing(model, plan, runner, xb, out)
    if plan.sanity.enabled:
        out.flags += result_flags(out, plan)
    out.seconds.update(runner.seconds)
    return out


__all__ = [
    "Outcome",
    "effective_min_norm",
    "fraction",
    "grid_worst_case",
    "min_norm_flag",
    "result_flags",
    "robust_beyond",
    "run_evaluation",
    "worst_case",
]
