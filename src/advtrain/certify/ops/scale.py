"""Elementwise affine layers ``z = a ⊙ x + b``: constant scalings and shifts, Normalize, BatchNorm.

BatchNorm is folded into its affine map: exactly with the running statistics in eval mode, or with
the clean batch's statistics when the run context asks for them (certified training).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from advtrain.certify.ops.affine import AffineOp
from advtrain.certify.ops.base import Interval, RunContext, sum_spec

#: ``(a, b)`` of ``z = a ⊙ x + b``, either ``None`` (1 resp. 0) or a broadcastable tensor.
Coeffs = tuple[Tensor | None, Tensor | None]


class ScaleOp(AffineOp):
    """Elementwise affine map ``z = a ⊙ x + b`` (constants broadcast over the batch).

    ``coeffs(ctx)`` returns ``(a, b)``, each ``None`` or a tensor of shape ``(1 or B, ...)``
    broadcastable against ``(B, *shape)``; ``a`` must not vary over the batch.
    """

    mixing = False

    def __init__(self, name: str, coeffs: Callable[[RunContext], Coeffs]) -> None:
        """An elementwise affine layer whose coefficients ``coeffs(ctx)`` gives at every call."""
        super().__init__(name)
        self.coeffs = coeffs

    def apply(self, ctx: RunContext, x: Tensor) -> Tensor:
        """``a ⊙ x + b``."""
        a, b = self.coeffs(ctx)
        out = x if a is None else x * a
        return out if b is None else out + b

    def apply_abs(self, ctx: RunContext, r: Tensor) -> Tensor:
        """``|a| ⊙ r``."""
        a, _ = self.coeffs(ctx)
        return r if a is None else r * a.abs()

    def interval(self, ctx: RunContext, *ivs: Interval) -> Interval:
        """Both ends mapped, swapped where ``a < 0``."""
        lo, hi = ivs[0]
        a, b = self.coeffs(ctx)
        if a is not None:
            lo, hi = lo * a, hi * a
            lo, hi = torch.minimum(lo, hi), torch.maximum(lo, hi)
        if b is not None:
            lo, hi = lo + b, hi + b
        return lo, hi

    def transpose(self, ctx: RunContext, A: Tensor) -> Tensor:
        """``A ⊙ a`` (broadcast over the spec rows)."""
        a, _ = self.coeffs(ctx)
        return A if a is None else A * a.unsqueeze(1)

    def bias_term(self, ctx: RunContext, A: Tensor) -> Tensor | None:
        """``Σ A ⊙ b`` per spec row."""
        _, b = self.coeffs(ctx)
        if b is None:
            return None
        return sum_spec(A * b.unsqueeze(1))


class NormalizeOp(ScaleOp):
    """:class:`advtrain.models.Normalize`: ``(x - mean) / std``, computed as the module does."""

    def __init__(self, name: str, module: nn.Module, in_shape: Sequence[int]) -> None:
        """Wraps the live ``Normalize`` layer applied to inputs of shape ``in_shape``."""
        self.module = module
        self.flat = len(in_shape) == 1
        super().__init__(name, self._coeffs)

    def _stats(self) -> tuple[Tensor, Tensor]:
        """``(mean, std)``, shaped for flat inputs when needed."""
        mean, std = self.module.mean, self.module.std
        if self.flat:
            mean, std = mean.view(1, -1), std.view(1, -1)
        return mean, std

    def _coeffs(self, ctx: RunContext) -> tuple[Tensor, Tensor]:
        """``(1/std, -mean/std)``."""
        mean, std = self._stats()
        return 1.0 / std, -mean / std

    def apply(self, ctx: RunContext, x: Tensor) -> Tensor:
        """``(x - mean) / std``, as the module computes it."""
        mean, std = self._stats()
        return (x - mean) / std

    def interval(self, ctx: RunContext, *ivs: Interval) -> Interval:
        """Both ends normalised (``std > 0``: the map is increasing)."""
        lo, hi = ivs[0]
        return self.apply(ctx, lo), self.apply(ctx, hi)


class BatchNormOp(ScaleOp):
    """``nn.BatchNorm1d/2d`` folded into ``a ⊙ x + b``.

    Eval mode: ``a = γ / sqrt(running_var + ε)``, ``b = β - running_mean·a`` (exact). In training
    mode (or without running statistics) BatchNorm normalises with the batch's own statistics;
    bounds are then only meaningful for a fixed affine map, so this is an error unless the run
    context asks for batch statistics, in which case the clean batch's mean and (biased)
    variance define the map, exactly the one the model's own forward pass applies.
    """

    def __init__(self, name: str, module: _BatchNorm, in_shape: Sequence[int]) -> None:
        """Wraps the live BatchNorm layer applied to inputs of shape ``in_shape``."""
        self.module = module
        self.view = (-1,) + (1,) * (len(in_shape) - 1)
        self.reduce = (0, *range(2, len(in_shape) + 1))
        super().__init__(name, self._coeffs)

    def uses_batch_stats(self) -> bool:
        """The layer normalises with the batch's statistics (training mode or no running ones)."""
        m = self.module
        return bool(m.training or not m.track_running_stats or m.running_mean is None)

    def _fold(self, mean: Tensor, var: Tensor) -> tuple[Tensor, Tensor]:
        """``(a, b)`` of BatchNorm with the statistics ``mean``, ``var``."""
        m = self.module
        inv = torch.rsqrt(var + m.eps)
        a = inv if m.weight is None else m.weight * inv
        b = -mean * a if m.bias is None else m.bias - mean * a
        return a.view(1, *self.view), b.view(1, *self.view)

    def _coeffs(self, ctx: RunContext) -> tuple[Tensor, Tensor]:
        """``(a, b)`` from the batch statistics (when used) or the running ones."""
        if self.uses_batch_stats():
            if not ctx.batch_stats:
                raise ValueError(
                    f"{self.name} is in training mode (it normalises with batch statistics), so "
                    "its map is not fixed and the bounds would not hold; call model.eval() "
                    "before computing bounds (IBPLoss/CROWNIBPLoss handle training mode)"
                )
            if self.index not in ctx.bn:
                raise RuntimeError(f"batch statistics of {self.name} were not computed")
            return ctx.bn[self.index]
        m = self.module
        return self._fold(m.running_mean, m.running_var)  # type: ignore[arg-type]

    def forward(self, ctx: RunContext, *xs: Tensor) -> Tensor:
        """The layer on a batch, recording its batch statistics in ``ctx`` when they are used."""
        x = xs[0]
        if self.uses_batch_stats() and ctx.batch_stats:
            var, mean = torch.var_mean(x, dim=self.reduce, unbiased=False)
            ctx.bn[self.index] = self._fold(mean, var)
        return self.apply(ctx, x)


__all__ = ["BatchNormOp", "Coeffs", "NormalizeOp", "ScaleOp"]
