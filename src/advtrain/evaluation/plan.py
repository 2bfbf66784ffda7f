"""What an evaluation runs: the threat model, the attacks, the eps grid, certificates and checks.

An :class:`EvaluationPlan` is built from plain values (no Hydra, no Lightning) and validated once:
``advtrain-eval``, a training run's final evaluation and the evaluation callbacks all describe
their work with it, and :func:`advtrain.evaluation.pipeline.run_evaluation` carries it out.

The protocol follows Croce & Hein, "Reliable evaluation of adversarial robustness with an
ensemble of diverse parameter-free attacks", ICML 2020: every attack runs on every example, an
example counts as robust only when it is correct clean and after the attack, and the per-example
worst case over all attacks is the number to quote.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from advtrain.threat import ThreatModel

#: Bound-propagation certificates: IBP (Gowal et al. 2018), CROWN (Zhang et al., NeurIPS 2018) and
#: CROWN-IBP (Zhang et al., ICLR 2020).
BOUND_METHODS = ("ibp", "crown", "crown_ibp")


def grid_value(factor: float, eps: float) -> float:
    """``factor * eps`` to 12 significant digits; exactly ``eps`` for a factor of 1."""
    value = factor * eps
    return eps if math.isclose(value, eps, rel_tol=1e-9) else float(f"{value:.12g}")


def eps_key(eps: float) -> str:
    """The text of ``eps`` in unit keys (stable across runs)."""
    return f"{eps:.10g}"


@dataclass(frozen=True)
class SmoothingPlan:
    """Randomized-smoothing certification (Cohen, Rosenfeld & Kolter, ICML 2019): CERTIFY with
    ``n0`` selection and ``n`` estimation samples at level ``alpha``, reported at ``radii``."""

    sigma: float
    n0: int = 100
    n: int = 100_000
    alpha: float = 0.001
    radii: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    batch_size: int = 1000
    n_examples: int | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.sigma) and self.sigma > 0):
            raise ValueError(f"certify.smoothing.sigma must be > 0, got {self.sigma}")
        for name in ("n0", "n", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"certify.smoothing.{name} must be >= 1")
        if not 0 < self.alpha < 1:
            raise ValueError(f"certify.smoothing.alpha must be in (0, 1), got {self.alpha}")
        if self.n_examples is not None and int(self.n_examples) < 1:
            raise ValueError("certify.smoothing.n_examples must be >= 1 or null (all)")

    def as_dict(self) -> dict[str, Any]:
        """The settings, as the report records them."""
        return {
            "sigma": self.sigma,
            "n0": self.n0,
            "n": self.n,
            "alpha": self.alpha,
            "radii": list(self.radii),
            "batch_size": self.batch_size,
            "n_examples": self.n_examples,
        }


@dataclass(frozen=True)
class SanityPlan:
    """The warning signs checked (:mod:`advtrain.evaluation.sanity`): ``n_examples`` examples for
    the model checks, ``margin`` the black-box advantage tolerated."""

    enabled: bool = True
    n_examples: int = 256
    margin: float = 0.03

    def as_dict(self) -> dict[str, Any]:
        """The settings, as the report records them."""
        return {"enabled": self.enabled, "n_examples": self.n_examples, "margin": self.margin}


@dataclass
class EvaluationPlan:
    """Everything an evaluation runs, validated.

    Attributes:
        threat: The threat model every attack and certificate is evaluated at.
        attacks: Name → attack (``attack(model, x, y) -> x_adv``), each at ``threat``.
        specs: Name → the attack's configuration (target and parameters), for the report.
        grid_factors: Robust accuracy is also measured at ``factor * threat.eps``.
        grid_attacks: The attacks run along the grid (names from ``attacks``).
        min_norm: A minimum-norm attack (:class:`~advtrain.attacks.FMN`, anything with a
            ``min_norm(model, x, y)`` method) whose per-example smallest adversarial norms give
            the eps curve at every grid eps from one run, capped at ``threat.eps`` by the main
            attacks (the curve never claims more than they measured there); ``None``: none.
        min_norm_spec: Its configuration, for the report.
        bound_methods: Bound-propagation certificates (:data:`BOUND_METHODS`).
        bounds_on_grid: Certify at every grid eps too (else only at ``threat.eps``).
        bounds_batch_size: Examples per bound-propagation pass.
        smoothing: Randomized smoothing, or ``None``.
        sanity: The sanity checks.
        batch_size: Examples per unit of work.
        seed: The seed of every unit (with the unit's key).
    """

    threat: ThreatModel
    attacks: dict[str, Callable[..., Any]]
    specs: dict[str, dict[str, Any]] = field(default_factory=dict)
    grid_factors: list[float] = field(default_factory=list)
    grid_attacks: list[str] | None = None
    min_norm: Any = None
    min_norm_spec: dict[str, Any] = field(default_factory=dict)
    bound_methods: list[str] = field(default_factory=list)
    bounds_on_grid: bool = False
    bounds_batch_size: int = 64
    smoothing: SmoothingPlan | None = None
    sanity: SanityPlan = field(default_factory=SanityPlan)
    batch_size: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        self.attacks = dict(self.attacks)
        check_attacks(self.attacks, self.threat)
        self.grid_factors = [float(f) for f in self.grid_factors]
        if any(not (math.isfinite(f) and f >= 0) for f in self.grid_factors):
            raise ValueError(
                "eps_grid.factors must be finite numbers >= 0 (multiples of threat.eps), got "
                f"{self.grid_factors}"
            )
        names = list(self.attacks) if self.grid_attacks is None else list(self.grid_attacks)
        unknown = [a for a in names if a not in self.attacks]
        if unknown:
            raise ValueError(
                f"eps_grid.attacks names unknown attacks {unknown}; have {list(self.attacks)}"
            )
        self.grid_attacks = [str(a) for a in names]
        if self.min_norm is not None:
            if not callable(getattr(self.min_norm, "min_norm", None)):
                raise TypeError(
                    "eps_grid.min_norm must build a minimum-norm attack with a min_norm(model, x, "
                    f"y) method (e.g. advtrain.attacks.FMN), got {type(self.min_norm).__name__}"
                )
            norm = getattr(self.min_norm, "norm", self.threat.norm)
            if str(norm) != self.threat.norm:
                raise ValueError(
                    f"eps_grid.min_norm.norm={norm} differs from threat.norm={self.threat.norm}; "
                    "the curve follows the threat model: leave its norm unset"
                )
        bad = [m for m in self.bound_methods if m not in BOUND_METHODS]
        if bad:
            raise ValueError(f"certify.bounds.methods: unknown {bad}; choose from {BOUND_METHODS}")
        for name in ("batch_size", "bounds_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) < 1:
                raise ValueError(f"{name} must be >= 1, got {value!r}")

    @property
    def min_norm_name(self) -> str:
        """The minimum-norm attack's name among the attacks at the threat model's eps."""
        name = str(getattr(self.min_norm, "name", "min-norm"))
        return f"{name}-curve" if name in self.attacks else name

    @property
    def grid_eps(self) -> list[float]:
        """The eps of the grid, ascending."""
        return sorted({grid_value(f, self.threat.eps) for f in self.grid_factors})

    @property
    def bound_eps(self) -> list[float]:
        """The eps each bound method certifies at."""
        if self.bounds_on_grid:
            return sorted(set(self.grid_eps) | {self.threat.eps})
        return [self.threat.eps]

    @property
    def eps_list(self) -> list[float]:
        """The threat model's eps first, then the other grid eps."""
        return [self.threat.eps] + [e for e in self.grid_eps if e != self.threat.eps]

    def threat_dict(self) -> dict[str, Any]:
        """The threat model as the report records it."""
        return {
            "norm": self.threat.norm,
            "eps": self.threat.eps,
            "bounds": [float(b) for b in self.threat.bounds],
        }

    def settings(self) -> dict[str, Any]:
        """What the numbers depend on (part of the resumable state's fingerprint)."""
        return {
            "seed": self.seed,
            "batch_size": self.batch_size,
            "threat_model": self.threat_dict(),
            "attacks": self.specs,
            "eps_grid": {
                "factors": self.grid_factors,
                "eps": self.grid_eps,
                "attacks": self.grid_attacks,
                "min_norm": self.min_norm_spec if self.min_norm is not None else None,
            },
            "certify": {
                "bounds": {
                    "methods": list(self.bound_methods),
                    "eps": self.bound_eps,
                    "batch_size": self.bounds_batch_size,
                },
                "smoothing": None if self.smoothing is None else self.smoothing.as_dict(),
            },
            "sanity": self.sanity.as_dict(),
        }


def check_attacks(attacks: Mapping[str, Any], threat: ThreatModel) -> None:
    """Every attack is callable and attacks at the threat model (eps, norm).

    Raises:
        TypeError: For an attack that is not callable.
        ValueError: For an attack at another eps or norm than the threat model's.
    """
    for name, attack in attacks.items():
        if not callable(attack):
            raise TypeError(f"attacks.{name} did not build a callable attack: {attack!r}")
        eps = getattr(attack, "eps", None)
        if eps is not None and not math.isclose(float(eps), threat.eps, abs_tol=1e-12):
            raise ValueError(
                f"attacks.{name}.eps={eps} differs from threat.eps={threat.eps}; the attacks "
                "follow the threat model: set threat.eps instead"
            )
        norm = getattr(attack, "norm", None)
        if norm is not None and str(norm) != threat.norm:
            raise ValueError(
                f"attacks.{name}.norm={norm} differs from threat.norm={threat.norm}; set "
                "threat.norm instead"
            )


def smoothing_plan(settings: Mapping[str, Any] | None) -> SmoothingPlan | None:
    """A :class:`SmoothingPlan` from a settings mapping (``None`` where ``sigma`` is unset)."""
    if not settings or settings.get("sigma") is None:
        return None
    keys = ("n0", "n", "alpha", "batch_size", "n_examples")
    kwargs: dict[str, Any] = {k: settings[k] for k in keys if k in settings}
    if "radii" in settings:
        kwargs["radii"] = tuple(float(r) for r in settings["radii"] or [0.0])
    return SmoothingPlan(sigma=float(settings["sigma"]), **kwargs)


def sanity_plan(settings: Mapping[str, Any] | None) -> SanityPlan:
    """A :class:`SanityPlan` from a settings mapping (missing keys: the defaults)."""
    settings = settings or {}
    keys: Sequence[str] = ("enabled", "n_examples", "margin")
    return SanityPlan(**{k: settings[k] for k in keys if k in settings})


__all__ = [
    "BOUND_METHODS",
    "EvaluationPlan",
    "SanityPlan",
    "SmoothingPlan",
    "check_attacks",
    "eps_key",
    "grid_value",
    "sanity_plan",
    "smoothing_plan",
]
