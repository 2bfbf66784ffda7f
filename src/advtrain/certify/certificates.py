"""Certified evaluation entries of the ``evaluation`` config group (``evaluation.certificates``).

Each entry builds a certificate whose :meth:`evaluate` ``(model, x, y)`` returns its section of
the report's ``certified`` object (:mod:`advtrain.report.schema`): ``certified.bounds[name]``
for bound propagation, ``certified.smoothing`` for randomized smoothing, and
``certified.summary[name]`` (the certified accuracy at the threat model's radius) for both.
Two kinds:

* :class:`BoundCertificate` — deterministic verification at radius ``eps`` by interval bound
  propagation (IBP; Gowal et al., "On the Effectiveness of Interval Bound Propagation for
  Training Verifiably Robust Models", 2018), CROWN-IBP (Zhang et al., "Towards Stable and
  Efficient Training of Verifiably Robust Neural Networks", ICLR 2020) or full CROWN (Zhang et
  al., "Efficient Neural Network Robustness Certification with General Activation Functions",
  NeurIPS 2018). Verified at ``eps`` implies correct on the clean input.
* :class:`SmoothingCertificate` — randomized smoothing's CERTIFY (Cohen, Rosenfeld & Kolter,
  "Certified Adversarial Robustness via Randomized Smoothing", ICML 2019; ``n0 = 100``,
  ``n = 100,000``, ``alpha = 0.001``): an example counts at radius ``r`` when the smoothed
  classifier returns its label with a certified L2 radius ``>= r`` (abstentions never count).

Both only run the model forward (the bounds never call it) and leave it as found.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from advtrain.attacks.base import check_positive_int
from advtrain.certify.bounds import crown_bounds, interval_bounds, verified
from advtrain.certify.smoothing import Smooth

BOUND_METHODS: tuple[str, ...] = ("ibp", "crown_ibp", "crown")


class BoundCertificate:
    """Verified accuracy at radius ``eps`` by IBP, CROWN-IBP or CROWN bounds on the margins.

    Args:
        method: ``"ibp"``, ``"crown_ibp"`` or ``"crown"`` (full CROWN: one backward pass per
            hidden neuron for the intermediate bounds, so keep it for small networks).
        eps: Radius in input units (the threat model's ``attack.eps``).
        norm: ``"linf"`` or ``"l2"``.
        bounds: The input box ``(low, high)``.
        batch_size: Examples bounded at once (default: 256).
    """

    kind: ClassVar[str] = "bounds"

    def __init__(
        self,
        method: str = "ibp",
        eps: float = 0.1,
        norm: str = "linf",
        bounds: Sequence[float] = (0.0, 1.0),
        batch_size: int = 256,
    ) -> None:
        if method not in BOUND_METHODS:
            raise ValueError(f"method must be one of {BOUND_METHODS}, got {method!r}")
        self.method = method
        self.eps = float(eps)
        self.norm = norm
        self.bounds = tuple(float(b) for b in bounds)
        self.batch_size = check_positive_int(batch_size, "batch_size")

    def _lower(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        if self.method == "ibp":
            lower, _ = interval_bounds(model, x, self.eps, self.norm, self.bounds, labels=y)
        else:
            intermediate = "ibp" if self.method == "crown_ibp" else "crown"
            lower, _ = crown_bounds(
                model, x, self.eps, self.norm, self.bounds, labels=y, intermediate=intermediate
            )
        return lower

    @torch.no_grad()
    def verified(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """Per example: all margin lower bounds positive at ``eps`` (so correct and robust)."""
        size = self.batch_size
        masks = [
            verified(self._lower(model, x[i : i + size], y[i : i + size]), y[i : i + size]).cpu()
            for i in range(0, len(x), size)
        ]
        return torch.cat(masks) if masks else torch.zeros(0, dtype=torch.bool)

    def evaluate(self, model: nn.Module, x: Tensor, y: Tensor) -> dict[str, Any]:
        """The ``certified.bounds[name]`` entry of the report.

        A model with a layer the bounds do not support gives ``{"supported": False, "reason"}``
        instead of failing the run.
        """
        start = time.perf_counter()
        try:
            mask = self.verified(model, x, y)
        except (TypeError, NotImplementedError) as err:
            return {"supported": False, "reason": str(err), "at_threat_eps": None}
        acc = float(mask.float().mean()) if len(mask) else 0.0
        return {
            "supported": True,
            "reason": None,
            "eps": [self.eps],
            "accuracy": [acc],
            "counts": [int(mask.sum())],
            "at_threat_eps": acc,
            "seconds": time.perf_counter() - start,
        }


class SmoothingCertificate:
    """Certified accuracy of the Gaussian-smoothed classifier at several L2 radii (Cohen et al.).

    Args:
        sigma: Noise level σ; the one the base model was trained with.
        num_classes: Number of classes.
        radii: L2 radii at which to report certified accuracy.
        n0: Selection samples per example (Cohen et al.: 100).
        n: Estimation samples per example (Cohen et al.: 100,000).
        alpha: Failure probability per example (Cohen et al.: 0.001).
        batch_size: Noisy copies per forward pass.
        seed: Seed of the noise.
        threat_eps: The threat model's L2 radius, for ``at_threat_eps`` and the summary.
    """

    kind: ClassVar[str] = "smoothing"

    def __init__(
        self,
        sigma: float = 0.25,
        num_classes: int = 10,
        radii: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
        n0: int = 100,
        n: int = 100_000,
        alpha: float = 0.001,
        batch_size: int = 1000,
        seed: int | None = 0,
        threat_eps: float | None = None,
    ) -> None:
        self.sigma = float(sigma)
        self.num_classes = check_positive_int(num_classes, "num_classes", minimum=2)
        self.radii = tuple(float(r) for r in radii)
        if not self.radii or min(self.radii) < 0:
            raise ValueError(f"radii must be a non-empty list of radii >= 0, got {list(radii)}")
        self.n0 = check_positive_int(n0, "n0")
        self.n = check_positive_int(n, "n")
        self.alpha = float(alpha)
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.seed = seed
        self.threat_eps = None if threat_eps is None else float(threat_eps)

    def certify(self, model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(prediction, radius)`` per example; prediction ``-1`` (radius 0) is an abstention."""
        smooth = Smooth(model, self.num_classes, self.sigma, seed=self.seed)
        results = smooth.certify_batch(x, self.n0, self.n, self.alpha, self.batch_size)
        prediction = torch.tensor([r.prediction for r in results], dtype=torch.long)
        radius = torch.tensor([r.radius for r in results], dtype=torch.float64)
        return prediction, radius

    def evaluate(self, model: nn.Module, x: Tensor, y: Tensor) -> dict[str, Any]:
        """The ``certified.smoothing`` section of the report."""
        start = time.perf_counter()
        prediction, radius = self.certify(model, x)
        correct = prediction == y.cpu()
        n = len(y)

        def frac(r: float) -> float:
            return float((correct & (radius >= r)).sum()) / n if n else 0.0

        return {
            "sigma": self.sigma,
            "n0": self.n0,
            "n": self.n,
            "alpha": self.alpha,
            "seed": self.seed,
            "radii": list(self.radii),
            "accuracy": [frac(r) for r in self.radii],
            "counts": [int((correct & (radius >= r)).sum()) for r in self.radii],
            "n_examples": n,
            "abstain_rate": float((prediction < 0).float().mean()) if n else None,
            "at_threat_eps": None if self.threat_eps is None else frac(self.threat_eps),
            "seconds": time.perf_counter() - start,
        }


def certified_section(
    certificates: dict[str, Any], model: nn.Module, x: Tensor, y: Tensor
) -> dict[str, Any]:
    """Runs every certificate and assembles the report's ``certified`` object.

    Args:
        certificates: Name → :class:`BoundCertificate` or :class:`SmoothingCertificate`.
        model: The classifier (in eval mode).
        x: Test inputs.
        y: Test labels.

    Returns:
        ``{"summary": {name: accuracy at the threat radius}, "bounds": {...}, "smoothing": ...}``
        (only the parts that were asked for); empty when ``certificates`` is.
    """
    out: dict[str, Any] = {}
    for name, certificate in certificates.items():
        kind = getattr(certificate, "kind", None)
        if kind not in ("bounds", "smoothing") or not hasattr(certificate, "evaluate"):
            raise TypeError(
                f"evaluation.certificates.{name} must build a BoundCertificate or a "
                "SmoothingCertificate (advtrain.certify.certificates), got "
                f"{type(certificate).__name__}"
            )
        entry = certificate.evaluate(model, x, y)
        if kind == "smoothing":
            if "smoothing" in out:
                raise ValueError("evaluation.certificates holds at most one smoothing certificate")
            out["smoothing"] = entry
        else:
            out.setdefault("bounds", {})[str(name)] = entry
        out.setdefault("summary", {})[str(name)] = entry.get("at_threat_eps")
    return out


__all__ = ["BOUND_METHODS", "BoundCertificate", "SmoothingCertificate", "certified_section"]
