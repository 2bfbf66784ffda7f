"""An :class:`~advtrain.evaluation.EvaluationPlan` from a config node, for both console scripts.

``advtrain-eval`` (``conf/eval.yaml``, the keys at its root) and ``advtrain-train``'s final
evaluation (the ``evaluation`` node of ``conf/train.yaml``) describe an evaluation with the same
keys, and the same attack presets (``conf/attacks/``) on the same threat node::

    attacks: {name: {_target_: ..., eps: ${threat.eps}, ...}}
    eps_grid: {factors: [...], attacks: [names] | null, min_norm: {name: {_target_: ...}} | null}
    certify: {bounds: {methods, on_eps_grid, batch_size}, smoothing: {sigma, n0, n, ...}}
    sanity: {enabled, n_examples, margin}
    batch_size: 256
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from advtrain.evaluation.plan import EvaluationPlan, sanity_plan, smoothing_plan
from advtrain.threat import ThreatModel, check_eps, check_norm


def container(node: Any) -> Any:
    """A plain (resolved) Python value of a config node."""
    if isinstance(node, DictConfig) or OmegaConf.is_list(node):
        return OmegaConf.to_container(node, resolve=True)
    return node


def threat_model(node: Any) -> ThreatModel:
    """The ``threat`` node (``norm``, ``eps``, ``bounds``) as a :class:`ThreatModel`.

    Raises:
        ValueError: For a missing or invalid eps, an unknown norm, bad bounds.
    """
    try:
        norm = check_norm(str(node.get("norm") or "linf"))
    except ValueError as err:
        raise ValueError(f"threat.{err}") from None
    if node.get("eps") is None:
        raise ValueError(
            "threat.eps is required (e.g. threat.eps=0.2 or threat.eps=8/255), or give "
            "run_dir= so the training run's threat model is used"
        )
    eps = check_eps(float(node.get("eps")), "threat.eps")
    return ThreatModel(norm=norm, eps=eps, bounds=tuple(float(b) for b in node.get("bounds")))


def build_attacks(node: Any) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The attacks of an ``attacks`` node (``null`` entries skipped) and their resolved specs."""
    attacks: dict[str, Any] = {}
    specs: dict[str, dict[str, Any]] = {}
    for name, spec in (node or {}).items():
        if spec is None:
            continue
        specs[str(name)] = container(spec)
        attacks[str(name)] = instantiate(spec, _convert_="all")
    return attacks, specs


def _min_norm(node: Any) -> tuple[Any, dict[str, Any]]:
    """The ``eps_grid.min_norm`` attack and its spec: a preset (``{fmn: {_target_: ...}}``, as
    ``attacks@eps_grid.min_norm=fmn`` composes it) or one spec with a ``_target_``."""
    if not node:
        return None, {}
    if "_target_" not in node:
        specs = [v for v in node.values() if v is not None]
        if len(specs) != 1 or not isinstance(specs[0], Mapping):
            raise ValueError(
                "eps_grid.min_norm must be one minimum-norm attack preset (e.g. "
                f"attacks@eps_grid.min_norm=fmn) or a spec with _target_, got {dict(node)}"
            )
        node = specs[0]
    return instantiate(node, _convert_="all"), dict(node)


def build_plan(node: Any, threat: ThreatModel, seed: int) -> EvaluationPlan:
    """The plan of an evaluation config node (see the module docstring).

    Raises:
        ValueError / TypeError: For settings the plan rejects (messages name the key).
    """
    attacks, specs = build_attacks(node.get("attacks"))
    grid: Mapping[str, Any] = container(node.get("eps_grid") or {})
    certify: Mapping[str, Any] = container(node.get("certify") or {})
    bounds: Mapping[str, Any] = certify.get("bounds") or {}
    grid_attacks = grid.get("attacks")
    min_norm, min_norm_spec = _min_norm(grid.get("min_norm"))
    return EvaluationPlan(
        threat=threat,
        attacks=attacks,
        specs=specs,
        grid_factors=list(grid.get("factors") or []),
        grid_attacks=None if grid_attacks is None else [str(a) for a in grid_attacks],
        min_norm=min_norm,
        min_norm_spec=min_norm_spec,
        bound_methods=[str(m) for m in bounds.get("methods") or []],
        bounds_on_grid=bool(bounds.get("on_eps_grid", False)),
        bounds_batch_size=int(bounds.get("batch_size", 64)),
        smoothing=smoothing_plan(certify.get("smoothing")),
        sanity=sanity_plan(container(node.get("sanity") or {})),
        batch_size=int(node.get("batch_size", 256)),
        seed=seed,
    )


__all__ = ["build_attacks", "build_plan", "container", "threat_model"]
