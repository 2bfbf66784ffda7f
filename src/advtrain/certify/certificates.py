"""Verified accuracy by bound propagation as one object (the CertifiedEvaluation callback).

:class:`BoundCertificate` — deterministic verification at radius ``eps`` by interval bound
propagation (IBP; Gowal et al., "On the Effectiveness of Interval Bound Propagation for Training
Verifiably Robust Models", 2018), CROWN-IBP (Zhang et al., "Towards Stable and Efficient Training
of Verifiably Robust Neural Networks", ICLR 2020) or full CROWN (Zhang et al., "Efficient Neural
Network Robustness Certification with General Activation Functions", NeurIPS 2018). Verified at
``eps`` implies correct on the clean input. It only runs the model forward and leaves it as
found. The evaluation pipeline certifies per unit of work (:mod:`advtrain.evaluation.units`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from advtrain.certify.bounds import crown_bounds, interval_bounds, verified
from advtrain.validation import check_positive_int

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


__all__ = ["BOUND_METHODS", "BoundCertificate"]
