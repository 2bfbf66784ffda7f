"""Threat models: an Lp ball of radius ``eps`` intersected with the input box ``bounds``.

The threat model is the one object every attack, loss and certificate in advtrain shares. It knows
how to project a perturbed input back into the allowed set, how to take a steepest-ascent step
for its norm, and how to draw a uniform random start inside the ball.

References:
    Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018
    (projected gradient ascent with sign steps for Linf, normalised steps for L2).
    Croce & Hein, "Mind the box: l1-APGD for sparse adversarial attacks", NeurIPS 2021
    (exact projection onto the L1 ball intersected with the box).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from advtrain.randomness import Draws

Norm = Literal["linf", "l2", "l1"]
NORMS: tuple[str, ...] = ("linf", "l2", "l1")

#: Tolerance for the input range check (float rounding of pixel values divided by 255).
BOUNDS_TOLERANCE = 1e-5


class OutOfBoundsError(ValueError):
    """Inputs outside the threat model's box; :attr:`bounds` is the box they left."""

    def __init__(self, message: str, bounds: tuple[float, float]) -> None:
        super().__init__(message)
        self.bounds = bounds


def check_eps(eps: float, name: str = "eps") -> float:
    """Validates a perturbation radius.

    Args:
        eps: The radius to check.
        name: The argument's name, used in the error message.

    Returns:
        ``eps`` as a Python float.

    Raises:
        TypeError: If ``eps`` is not a real number.
        ValueError: If ``eps`` is negative, NaN or infinite.
    """
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        if isinstance(eps, Tensor) and eps.numel() == 1:
            eps = float(eps.item())
        else:
            raise TypeError(f"{name} must be a real number, got {type(eps).__name__}: {eps!r}")
    eps = float(eps)
    if not math.isfinite(eps):
        raise ValueError(f"{name} must be finite, got {eps}")
    if eps < 0:
        raise ValueError(
            f"{name} must be >= 0, got {eps}; pass the radius of the perturbation ball"
        )
    return eps


def check_norm(norm: str, allowed: Sequence[str] = NORMS) -> str:
    """Validates a norm name against the norms an algorithm supports.

    Raises:
        ValueError: If ``norm`` is not one of ``allowed``.
    """
    if not isinstance(norm, str) or norm.lower() not in allowed:
        raise ValueError(f"norm must be one of {list(allowed)}, got {norm!r}")
    return norm.lower()


def check_bounds(bounds: Sequence[float]) -> tuple[float, float]:
    """Validates an input box ``(low, high)``.

    Raises:
        ValueError: If ``bounds`` is not two finite numbers with ``low < high``.
    """
    if not isinstance(bounds, Sequence) or isinstance(bounds, str) or len(bounds) != 2:
        raise ValueError(f"bounds must be a pair (low, high), got {bounds!r}")
    low, high = float(bounds[0]), float(bounds[1])
    if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
        raise ValueError(f"bounds must be finite with low < high, got {bounds!r}")
    return low, high


def _flat_norm(t: Tensor, norm: str) -> Tensor:
    """Per-example norm of ``t`` (shape ``(batch, ...)``), returned with shape ``(batch,)``."""
    flat = t.flatten(1)
    if norm == "linf":
        return flat.abs().amax(dim=1)
    if norm == "l2":
        return flat.norm(p=2, dim=1)
    return flat.abs().sum(dim=1)


def _view(v: Tensor, like: Tensor) -> Tensor:
    """Reshapes a per-example vector so it broadcasts against ``like``."""
    return v.view(-1, *([1] * (like.dim() - 1)))


def project_l1_box(delta: Tensor, x: Tensor, eps: Tensor, low: float, high: float) -> Tensor:
    """Exact Euclidean projection of ``x + delta`` onto ``{|delta|_1 <= eps} ∩ [low, high]``.

    Solves, per example, ``min ||d - delta||_2`` subject to ``||d||_1 <= eps`` and
    ``low <= x + d <= high``. The solution is ``d_i = clip(sign(delta_i)·max(|delta_i| - λ, 0),
    box_i)`` for the smallest ``λ >= 0`` that meets the L1 budget; ``λ`` is found by sorting the
    breakpoints of the piecewise-linear, non-increasing function ``λ ↦ ||d(λ)||_1`` (Croce & Hein
    2021, Lemma 1).

    Args:
        delta: Perturbation, shape ``(batch, ...)``.
        x: Clean inputs, same shape, inside the box.
        eps: Per-example radii, shape ``(batch,)``.
        low: Lower input bound.
        high: Upper input bound.

    Returns:
        The projected perturbation, same shape as ``delta``.
    """
    shape = delta.shape
    d = delta.flatten(1)
    xf = x.flatten(1)
    # Largest magnitude each coordinate may take in the direction of its sign.
    cap = torch.where(d >= 0, high - xf, xf - low).clamp_min(0)
    a = d.abs()
    # Box-only projection; if it already meets the budget we are done.
    boxed = torch.minimum(a, cap)
    within = boxed.sum(dim=1) <= eps
    # d(λ)_i = min(max(a_i - λ, 0), cap_i). Breakpoints at λ = a_i - cap_i and λ = a_i.
    bp = torch.cat([(a - cap).clamp_min(0), a], dim=1)
    bp_sorted, _ = bp.sort(dim=1)

    def l1_at(lam: Tensor) -> Tensor:
        return torch.minimum(
            (a.unsqueeze(1) - lam.unsqueeze(2)).clamp_min(0), cap.unsqueeze(1)
        ).sum(dim=2)

    # Evaluate the budget at every breakpoint (vectorised); memory O(batch · 2n · n) is avoided by
    # a binary search over the sorted breakpoints instead.
    n_bp = bp_sorted.shape[1]
    lo_idx = torch.zeros(d.shape[0], dtype=torch.long, device=d.device)
    hi_idx = torch.full_like(lo_idx, n_bp - 1)
    for _ in range(math.ceil(math.log2(n_bp)) + 1):
        mid = (lo_idx + hi_idx) // 2
        lam_mid = bp_sorted.gather(1, mid.unsqueeze(1)).squeeze(1)
        val = l1_at(lam_mid.unsqueeze(1)).squeeze(1)
        too_big = val > eps
        lo_idx = torch.where(too_big, mid + 1, lo_idx)
        hi_idx = torch.where(too_big, hi_idx, mid)
    # hi_idx: first breakpoint with l1 <= eps. Interpolate between it and the previous one.
    right = bp_sorted.gather(1, hi_idx.unsqueeze(1)).squeeze(1)
    left_idx = (hi_idx - 1).clamp_min(0)
    left = torch.where(hi_idx > 0, bp_sorted.gather(1, left_idx.unsqueeze(1)).squeeze(1), 0.0)
    f_right = l1_at(right.unsqueeze(1)).squeeze(1)
    f_left = l1_at(left.unsqueeze(1)).squeeze(1)
    slope = (f_left - f_right) / (right - left).clamp_min(1e-12)
    lam = torch.where(f_left <= eps, left, right - (eps - f_right) / slope.clamp_min(1e-12)).clamp(
        min=left, max=right
    )
    proj = torch.minimum((a - lam.unsqueeze(1)).clamp_min(0), cap) * d.sign()
    out = torch.where(within.unsqueeze(1), boxed * d.sign(), proj)
    return out.view(shape)


@dataclass(frozen=True)
class ThreatModel:
    """An Lp ball of radius ``eps`` around each input, intersected with the input box ``bounds``.

    Epsilon is always in input units: normalisation belongs inside the model
    (:class:`advtrain.models.Normalize`), so ``eps=8/255`` means eight grey levels.

    Attributes:
        norm: ``"linf"``, ``"l2"`` or ``"l1"``.
        eps: Radius of the ball, ``>= 0``.
        bounds: ``(low, high)`` of valid inputs, ``(0.0, 1.0)`` for images scaled to [0, 1].
    """

    norm: str = "linf"
    eps: float = 8 / 255
    bounds: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "norm", check_norm(self.norm))
        object.__setattr__(self, "eps", check_eps(self.eps))
        object.__setattr__(self, "bounds", check_bounds(self.bounds))

    def check_inputs(
        self, x: Tensor, name: str = "x", labels: Tensor | None = None
    ) -> tuple[int, int] | None:
        """Raises if ``x`` is not a finite floating batch inside :attr:`bounds`.

        Returns:
            ``(min, max)`` of ``labels``, read in the same host sync (see
            :func:`check_input_batch`), or ``None`` without labels.

        Raises:
            TypeError: If ``x`` is not a floating-point tensor.
            ValueError: If ``x`` has no batch dimension, holds NaN/inf, or leaves the box.
        """
        return check_input_batch(x, self.bounds, name, labels=labels)

    def project(self, x_adv: Tensor, x: Tensor) -> Tensor:
        """Projects ``x_adv`` onto the threat model's set around ``x``.

        Linf: exact (clip to the cube, then to the box; the intersection of two boxes). L2: radial
        shrink onto the ball, then clip to the box (the standard PGD projection; the result is in
        the ball and the box). L1: exact projection onto the L1 ball ∩ box.
        """
        low, high = self.bounds
        delta = x_adv - x
        if self.norm == "linf":
            delta = delta.clamp(-self.eps, self.eps)
        elif self.norm == "l2":
            n = _flat_norm(delta, "l2")
            factor = (self.eps / n.clamp_min(1e-12)).clamp(max=1.0)
            delta = delta * _view(factor, delta)
        else:
            eps = torch.full((x.shape[0],), self.eps, dtype=delta.dtype, device=delta.device)
            return (x + project_l1_box(delta, x, eps, low, high)).clamp(low, high)
        return (x + delta).clamp(low, high)

    def linf_limits(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Per-coordinate limits ``(max(x - eps, low), min(x + eps, high))`` of the Linf ball ∩
        box around ``x`` (Linf only).

        Clipping a point to them is the exact Linf projection in one op (``clamp_`` with tensor
        limits), where :meth:`project` takes four and rounds ``x + (x_adv - x)``. Attacks compute
        them once per call and clip every iterate in place.

        Raises:
            ValueError: For a threat model other than Linf.
        """
        if self.norm != "linf":
            raise ValueError(f"linf_limits is for the linf threat model, not {self.norm!r}")
        low, high = self.bounds
        return (x - self.eps).clamp_min_(low), (x + self.eps).clamp_max_(high)

    def ascent_step(
        self,
        x_adv: Tensor,
        grad: Tensor,
        alpha: float,
        x: Tensor,
        limits: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """``x_adv + alpha · ascent_direction(grad)``, projected back around ``x``: one step of
        PGD-style attacks, without autograd (call it under ``torch.no_grad``).

        With ``limits`` (:meth:`linf_limits` of ``x``, Linf only) the step is three in-place ops
        that overwrite ``grad`` and the storage of ``x_adv`` (whose graph, if any, must be freed
        already, as after ``torch.autograd.grad``); otherwise new tensors are made.
        """
        if limits is not None:
            return x_adv.detach().add_(grad.sign_(), alpha=alpha).clamp_(*limits)
        return self.project(x_adv + alpha * self.ascent_direction(grad), x)

    def ascent_direction(self, grad: Tensor, sparsity: float = 0.95) -> Tensor:
        """Steepest-ascent direction of unit norm for this threat model's norm.

        Linf: ``sign(grad)``. L2: ``grad / ||grad||_2``. L1: the sparse step of Croce & Hein 2021,
        keeping the ``1 - sparsity`` largest-magnitude coordinates, normalised to unit L1 norm.

        Args:
            grad: Input gradient, shape ``(batch, ...)``.
            sparsity: L1 only, the fraction of coordinates that are set to zero.
        """
        if self.norm == "linf":
            return grad.sign()
        if self.norm == "l2":
            n = _flat_norm(grad, "l2").clamp_min(1e-12)
            return grad / _view(n, grad)
        flat = grad.flatten(1)
        k = max(1, round((1.0 - sparsity) * flat.shape[1]))
        thresh = flat.abs().topk(k, dim=1).values[:, -1:]
        step = torch.where(flat.abs() >= thresh, flat.sign(), torch.zeros_like(flat))
        step = step / step.abs().sum(dim=1, keepdim=True).clamp_min(1e-12)
        return step.view_as(grad)

    def random_start(
        self,
        x: Tensor,
        generator: torch.Generator | Draws | None = None,
        key: Sequence[int] = (),
    ) -> Tensor:
        """A random point of the ball around ``x``, clipped to the box.

        Linf: uniform in the cube. L2 and L1: a uniformly random direction scaled by a radius drawn
        so that the point is uniform in the ball (``eps · u^(1/d)``). ``generator`` is a
        ``torch.Generator`` (``None``: torch's global RNG) or an attack call's
        :class:`~advtrain.randomness.Draws` (``key`` names the draw, e.g. the restart).
        """
        low, high = self.bounds
        if self.eps == 0:
            return x.clone()
        draws = generator if isinstance(generator, Draws) else Draws(x.device, generator)
        if self.norm == "linf":
            # Uniform in the cube, then clipped to the box. The cube and the box are both products
            # of intervals, so the clipped point stays in the cube: no projection is needed (four
            # in-place ops; attacks draw a start every call, often on small batches).
            start = draws.rand(x.shape, x.dtype, (*key, 0))
            return start.mul_(2 * self.eps).sub_(self.eps).add_(x).clamp_(low, high)
        d = x[0].numel()
        g = draws.randn(x.shape, x.dtype, (*key, 1))
        if self.norm == "l1":
            # Laplace directions are uniform on the L1 sphere after normalisation.
            e = draws.rand(x.shape, x.dtype, (*key, 2))
            g = g.sign() * (-torch.log1p(-e.clamp(max=1 - 1e-7)))
        n = _flat_norm(g, self.norm).clamp_min(1e-12)
        u = draws.rand((x.shape[0],), x.dtype, (*key, 3))
        radius = self.eps * u.pow(1.0 / d)
        delta = g / _view(n, g) * _view(radius, g)
        return self.project((x + delta).clamp(low, high), x)

    def distance(self, x_adv: Tensor, x: Tensor) -> Tensor:
        """Per-example distance ``||x_adv - x||`` in the threat model's norm, shape ``(batch,)``."""
        return _flat_norm(x_adv - x, self.norm)

    def contains(self, x_adv: Tensor, x: Tensor, atol: float = 1e-5) -> Tensor:
        """Per-example boolean: ``x_adv`` lies in the ball (up to ``atol``) and in the box."""
        low, high = self.bounds
        in_ball = self.distance(x_adv, x) <= self.eps * (1 + 1e-5) + atol
        flat = x_adv.flatten(1)
        in_box = (flat >= low - atol).all(dim=1) & (flat <= high + atol).all(dim=1)
        return in_ball & in_box


def check_input_batch(
    x: Tensor, bounds: Sequence[float] | None, name: str = "x", labels: Tensor | None = None
) -> tuple[int, int] | None:
    """Raises a clear error unless ``x`` is a finite floating batch inside ``bounds``.

    Args:
        x: The batch.
        bounds: ``(low, high)`` of valid values, or ``None`` for no range check.
        name: What the error messages call ``x``.
        labels: Integer labels (already checked by :func:`check_labels` for type and shape)
            whose smallest and largest value are read in the same host sync as ``x``'s extrema,
            for a later check against the model's number of classes without another sync.

    Returns:
        ``(min, max)`` of ``labels``, or ``None`` without labels (or with an empty one).

    Raises:
        TypeError: If ``x`` is not a floating-point tensor.
        ValueError: If ``x`` has no batch dimension, is empty or holds NaN/inf;
            :class:`OutOfBoundsError` (a ``ValueError``) if it leaves the box.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(
            f"{name} must be a floating-point tensor, got dtype {x.dtype}; convert images with "
            "x.float() / 255 so they lie in bounds"
        )
    if x.dim() < 2:
        raise ValueError(
            f"{name} must have a batch dimension (batch, ...), got shape {tuple(x.shape)}"
        )
    if x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch")
    # One reduction (and one host sync) for NaN, inf and the range: NaN propagates into the
    # extrema and an infinite value is one of them. The labels' extrema ride along (in float64,
    # exact for any real class index): on a GPU each sync stalls the queue of launched kernels.
    extrema = torch.stack(torch.aminmax(x.detach())).double()
    with_labels = labels is not None and labels.numel() > 0
    if with_labels:
        assert labels is not None
        label_extrema = torch.stack(torch.aminmax(labels.detach())).to(extrema.device)
        extrema = torch.cat([extrema, label_extrema.double()])
    values = extrema.tolist()
    x_min, x_max = values[0], values[1]
    if not (math.isfinite(x_min) and math.isfinite(x_max)):
        raise ValueError(f"{name} contains NaN or infinite values")
    if bounds is not None:
        low, high = bounds
        if x_min < low - BOUNDS_TOLERANCE or x_max > high + BOUNDS_TOLERANCE:
            raise OutOfBoundsError(
                f"{name} has values in [{x_min:.4g}, {x_max:.4g}] outside bounds ({low}, {high}); "
                "scale inputs into bounds (e.g. pixels / 255). If the data is normalised "
                "((x - mean) / std), attack the pixels instead: put the normalisation inside the "
                "model (advtrain.models.Normalize) or pass normalization=(mean, std) to the "
                "callback. Widening bounds to the normalised range would measure eps in "
                "normalised units, not pixels",
                (float(low), float(high)),
            )
    return (int(values[2]), int(values[3])) if with_labels else None


def check_labels(
    y: Tensor,
    batch_size: int,
    num_classes: int | None = None,
    label_range: tuple[int, int] | None = None,
) -> None:
    """Raises a clear error unless ``y`` is a vector of ``batch_size`` integer class indices.

    Args:
        y: The labels.
        batch_size: The number of labels expected.
        num_classes: Labels must lie in ``[0, num_classes)``; ``None`` skips this check.
        label_range: ``(min, max)`` of ``y`` when already read (:func:`check_input_batch`), so
            the class check needs no host sync of its own.

    Raises:
        TypeError: If ``y`` is not an integer tensor.
        ValueError: If its shape is wrong or a label is outside ``[0, num_classes)``.
    """
    if not isinstance(y, Tensor):
        raise TypeError(f"labels must be a torch.Tensor, got {type(y).__name__}")
    if y.dtype.is_floating_point or y.dtype == torch.bool or y.is_complex():
        raise TypeError(
            f"labels must be integer class indices (torch.long), got dtype {y.dtype}; "
            "one-hot or soft labels are not supported: pass y.argmax(dim=1)"
        )
    if y.dim() != 1 or y.shape[0] != batch_size:
        raise ValueError(
            f"labels must have shape ({batch_size},) to match the inputs, got {tuple(y.shape)}"
        )
    if num_classes is not None and y.numel() > 0:
        if label_range is None:
            extrema = torch.stack(torch.aminmax(y.detach())).tolist()
            label_range = (int(extrema[0]), int(extrema[1]))
        lo, hi = label_range
        if lo < 0 or hi >= num_classes:
            raise ValueError(
                f"labels must lie in [0, {num_classes}) for a model with {num_classes} outputs, "
                f"got values in [{lo}, {hi}]"
            )
