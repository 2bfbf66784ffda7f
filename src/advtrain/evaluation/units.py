"""Units of work of an evaluation and the runner that computes or reuses them.

A unit is one attack at one eps on one batch, one certificate on one batch, or the clean pass on
one batch. Each starts from a seed derived from the plan's seed and its key, and advtrain attacks
draw their random starts per example (:mod:`advtrain.randomness`), so a unit gives the same
result whether it runs in the first attempt or after an interruption, and whatever the batch
size. Finished units go to a store (:class:`~advtrain.evaluation.state.UnitStore` on disk, or
:class:`MemoryStore`).
"""

from __future__ import annotations

import copy
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from advtrain.attacks.autoattack import AutoAttackResult
from advtrain.evaluation.attacks import evaluate_attacks
from advtrain.evaluation.plan import SmoothingPlan
from advtrain.threat import ThreatModel

UnitHook = Callable[[str], None]


class Store(Protocol):
    """Where finished units are kept: ``get`` returns ``None`` for a unit not yet computed."""

    def get(self, key: str) -> dict[str, Any] | None: ...

    def put(self, key: str, value: Mapping[str, Any]) -> None: ...


class MemoryStore:
    """A store that keeps units in memory (an evaluation that is not resumed)."""

    def __init__(self) -> None:
        self.units: dict[str, dict[str, Any]] = {}
        self.reused = 0
        self.computed = 0
        self.rejected = 0

    def get(self, key: str) -> dict[str, Any] | None:
        """The unit's result, or ``None``."""
        return self.units.get(key)

    def put(self, key: str, value: Mapping[str, Any]) -> None:
        """Keeps the unit's result."""
        self.units[key] = dict(value)
        self.computed += 1


def _progress(total: int, initial: int, desc: str, enabled: bool) -> Any:
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm ships with Lightning
        return None
    return tqdm(total=total, initial=initial, desc=desc, leave=False, dynamic_ncols=True)


class UnitRunner:
    """Runs units through a store: reuses finished ones, computes and saves the others.

    Args:
        store: Where units are kept.
        seed: The evaluation's seed; each unit seeds torch with it and its key.
        progress: Show a progress bar per phase.
        hook: Called with the key of each unit after it is computed and saved.

    Attributes:
        seconds: Compute time per timing name (reused units count their recorded time).
    """

    def __init__(
        self, store: Store, seed: int, progress: bool = False, hook: UnitHook | None = None
    ) -> None:
        self.store = store
        self.seed = seed
        self.progress = progress
        self.hook = hook
        self.seconds: dict[str, float] = {}

    def phase(
        self,
        prefix: str,
        batches: Sequence[int],
        compute: Callable[[int], dict[str, Any]],
        desc: str,
        timing: str,
    ) -> list[dict[str, Any]]:
        """Every batch's unit under ``prefix``, computed by ``compute(batch)`` where not stored."""
        keys = [f"{prefix}/batch_{b:05d}" for b in batches]
        done = {k: self.store.get(k) for k in keys}
        bar = _progress(len(keys), sum(v is not None for v in done.values()), desc, self.progress)
        out = []
        try:
            for b, key in zip(batches, keys, strict=True):
                res = done[key]
                if res is None:
                    torch.manual_seed((self.seed * 1_000_003 + zlib.crc32(key.encode())) % 2**63)
                    t0 = time.perf_counter()
                    res = compute(b)
                    res["seconds"] = time.perf_counter() - t0
                    self.store.put(key, res)
                    if bar is not None:
                        bar.update(1)
                    if self.hook is not None:
                        self.hook(key)
                out.append(res)
                self.seconds[timing] = self.seconds.get(timing, 0.0) + float(res["seconds"])
        finally:
            if bar is not None:
                bar.close()
        return out


def attack_unit(
    model: nn.Module, attack: Any, name: str, eps: float, x: Tensor, y: Tensor, first_id: int
) -> dict[str, Any]:
    """One attack at one eps on one batch; random draws per example (``first_id`` + position),
    so the numbers do not depend on the batch size. The attack passed in is not modified."""
    fresh = copy.deepcopy(attack)
    if hasattr(fresh, "eps"):
        fresh.eps = eps
    res = evaluate_attacks(
        model, (x, y), {name: fresh}, progress=False, batch_size=len(x), first_id=first_id
    )
    out: dict[str, Any] = {"robust": res.robust_correct[name].cpu()}
    detail = res.details.get(name)
    if isinstance(detail, AutoAttackResult):
        out["members"] = {m: detail.robust_after[m].cpu() for m in detail.attacks}
        out["member_names"] = list(detail.attacks)
        out["escalated"] = bool(detail.escalated)
        out["escalation_coverage"] = float(detail.escalation_coverage)
    return out


def bound_fn(method: str) -> Callable[..., tuple[Tensor, Tensor]]:
    """The bound function of ``method`` (``ibp``, ``crown`` or ``crown_ibp``)."""
    from advtrain.certify import crown_bounds, interval_bounds

    if method == "ibp":
        return interval_bounds
    if method == "crown":
        return lambda *a, **k: crown_bounds(*a, intermediate="crown", **k)
    return lambda *a, **k: crown_bounds(*a, intermediate="ibp", **k)


def bounds_support(
    model: nn.Module, method: str, x: Tensor, y: Tensor, threat: ThreatModel
) -> str | None:
    """``None`` if ``method`` handles ``model``; otherwise the reason it does not."""
    if threat.norm not in ("linf", "l2"):
        return f"bound propagation certifies linf and l2 balls, not {threat.norm}"
    try:
        with torch.no_grad():
            bound_fn(method)(
                model, x[:1], 0.0, norm=threat.norm, bounds=threat.bounds, labels=y[:1]
            )
    except (TypeError, NotImplementedError) as exc:
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return None


def bounds_unit(
    model: nn.Module,
    method: str,
    eps: float,
    x: Tensor,
    y: Tensor,
    threat: ThreatModel,
    chunk: int,
) -> dict[str, Any]:
    """Which examples of one batch ``method`` verifies at ``eps``."""
    from advtrain.certify import verified

    masks = []
    with torch.no_grad():
        for i in range(0, len(x), chunk):
            xb, yb = x[i : i + chunk], y[i : i + chunk]
            lower, _ = bound_fn(method)(
                model, xb, eps, norm=threat.norm, bounds=threat.bounds, labels=yb
            )
            masks.append(verified(lower, yb).cpu())
    return {"verified": torch.cat(masks)}


def smoothing_unit(
    model: nn.Module, num_classes: int, plan: SmoothingPlan, seed: int, x: Tensor
) -> dict[str, Any]:
    """CERTIFY (Cohen et al. 2019) on one batch: each example's prediction and L2 radius."""
    from advtrain.certify import Smooth

    smooth = Smooth(model, num_classes, plan.sigma, seed=seed)
    res = smooth.certify_batch(x, plan.n0, plan.n, plan.alpha, plan.batch_size)
    return {
        "predict": torch.tensor([r.prediction for r in res], dtype=torch.long),
        "radius": torch.tensor([r.radius for r in res], dtype=torch.float64),
    }


__all__ = [
    "MemoryStore",
    "Store",
    "UnitHook",
    "UnitRunner",
    "attack_unit",
    "bound_fn",
    "bounds_support",
    "bounds_unit",
    "smoothing_unit",
]
