"""Affine and linear layers: dense, convolution, reshape and the sum of two perturbed tensors.

An affine layer ``z = M·x + b`` maps a box exactly in centre/width form, ``(M·mu + b, |M|·w)``
(interval bound propagation, Gowal et al. 2018, Eq. 4-5), and a linear bound ``A·z + c`` on its
output to ``(A·M)·x + (A·b + c)`` on its input (CROWN, Zhang et al. 2018).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from advtrain.certify.ops.base import (
    Backward,
    BoundOp,
    Box,
    Interval,
    RunContext,
    as_pair,
    box_to_interval,
    interval_to_box,
    sum_spec,
)


class AffineOp(BoundOp):
    """An affine layer ``z = M·x + b``: boxes through ``M`` (centre) and ``|M|`` (radius).

    Subclasses implement :meth:`apply` (``M·x + b``), :meth:`apply_abs` (``|M|·r``),
    :meth:`transpose` (``A ↦ A·M``) and :meth:`bias_term` (``A ↦ A·b``).

    Attributes:
        mixing: The layer mixes coordinates (linear, convolution, pooling); elementwise scalings
            and reshapes do not.
    """

    mixing = True

    def apply(self, ctx: RunContext, x: Tensor) -> Tensor:
        """``M·x + b``."""
        raise NotImplementedError

    def apply_abs(self, ctx: RunContext, r: Tensor) -> Tensor:
        """``|M|·r`` (no bias)."""
        raise NotImplementedError

    def transpose(self, ctx: RunContext, A: Tensor) -> Tensor:
        """``A·M`` for coefficients ``A`` of shape ``(B_A, S, *out_shape)``."""
        raise NotImplementedError

    def bias_term(self, ctx: RunContext, A: Tensor) -> Tensor | None:
        """``A·b`` of shape ``(B_A, S)``, or ``None`` for a layer without bias."""
        return None

    def forward(self, ctx: RunContext, *xs: Tensor) -> Tensor:
        """The layer on a concrete batch: :meth:`apply`."""
        return self.apply(ctx, xs[0])

    def interval(self, ctx: RunContext, *ivs: Interval) -> Interval:
        """The image of a box, through its centre/width form."""
        return box_to_interval(self.box(ctx, interval_to_box(ivs[0])))

    def box(self, ctx: RunContext, *boxes: Box, owned: bool = False) -> Box:
        """``(M·mu + b, |M|·w)``: exact for the centre/width form of a box."""
        mu, w = boxes[0]
        return self.apply(ctx, mu), self.apply_abs(ctx, w)

    def backward(
        self, ctx: RunContext, lA: Tensor | None, uA: Tensor | None, in_bounds: Sequence[Any]
    ) -> Backward:
        """``A ↦ (A·M, A·b)`` for both bounds (computed once when they share ``A``)."""

        def one(A: Tensor | None) -> tuple[Tensor | None, Tensor | float]:
            if A is None:
                return None, 0.0
            bias = self.bias_term(ctx, A)
            return self.transpose(ctx, A), 0.0 if bias is None else bias

        new_l, bias_l = one(lA)
        if uA is lA:
            new_u, bias_u = new_l, bias_l
        else:
            new_u, bias_u = one(uA)
        return [(new_l, new_u)], bias_l, bias_u


class DenseOp(AffineOp):
    """``nn.Linear`` (on the last dimension)."""

    def __init__(self, name: str, module: nn.Linear) -> None:
        """Wraps the live layer ``module`` (its parameters are read at every call)."""
        super().__init__(name)
        self.module = module

    def apply(self, ctx: RunContext, x: Tensor) -> Tensor:
        """``W·x + b``."""
        return F.linear(x, self.module.weight, self.module.bias)

    def apply_abs(self, ctx: RunContext, r: Tensor) -> Tensor:
        """``|W|·r``."""
        return F.linear(r, self.module.weight.abs())

    def transpose(self, ctx: RunContext, A: Tensor) -> Tensor:
        """``A·W``."""
        return A.matmul(self.module.weight)

    def bias_term(self, ctx: RunContext, A: Tensor) -> Tensor | None:
        """``A·b``."""
        b = self.module.bias
        return None if b is None else sum_spec(A.matmul(b))

    def folded(self, C: Tensor) -> tuple[Tensor, Tensor | None]:
        """The weights ``C·W`` and bias ``C·b`` of this layer followed by the spec ``C``."""
        W = C.matmul(self.module.weight)
        b = self.module.bias
        return W, None if b is None else C.matmul(b)


def conv_padding(module: nn.Conv2d) -> tuple[int, int]:
    """Numeric symmetric padding of a convolution (resolving ``"valid"``/``"same"``).

    Raises:
        ValueError: For a padding mode other than zeros, or an asymmetric ``"same"`` padding.
    """
    if module.padding_mode != "zeros":
        raise ValueError(
            f"bound propagation supports zero-padded convolutions only; {module} uses "
            f"padding_mode={module.padding_mode!r}"
        )
    pad = module.padding
    if isinstance(pad, str):
        if pad == "valid":
            return 0, 0
        dil, ker = as_pair(module.dilation), as_pair(module.kernel_size)
        total = [d * (k - 1) for d, k in zip(dil, ker, strict=True)]
        if any(t % 2 for t in total):
            raise ValueError(
                f"{module} uses padding='same' with an even receptive field (asymmetric "
                "padding), which bound propagation does not support; pad explicitly"
            )
        return total[0] // 2, total[1] // 2
    return as_pair(pad)


class ConvOp(AffineOp):
    """``nn.Conv2d`` with zero padding; its transpose is a transposed convolution."""

    def __init__(self, name: str, module: nn.Conv2d, in_shape: Sequence[int]) -> None:
        """Wraps the live layer ``module`` applied to inputs of shape ``in_shape``.

        Raises:
            ValueError: For a padding bound propagation does not support (see
                :func:`conv_padding`).
        """
        super().__init__(name)
        self.module = module
        self.in_shape = tuple(in_shape)
        conv_padding(module)  # validate early

    def _args(self) -> dict[str, Any]:
        """Keyword arguments of ``F.conv2d`` for this layer (numeric padding)."""
        m = self.module
        return {
            "stride": m.stride,
            "padding": conv_padding(m),
            "dilation": m.dilation,
            "groups": m.groups,
        }

    def apply(self, ctx: RunContext, x: Tensor) -> Tensor:
        """The convolution with its bias."""
        return F.conv2d(x, self.module.weight, self.module.bias, **self._args())

    def apply_abs(self, ctx: RunContext, r: Tensor) -> Tensor:
        """The convolution with ``|W|`` and no bias."""
        return F.conv2d(r, self.module.weight.abs(), None, **self._args())

    def transpose(self, ctx: RunContext, A: Tensor) -> Tensor:
        """A transposed convolution of every spec row, back to the input shape."""
        m = self.module
        args = self._args()
        b, s = A.shape[:2]
        out_hw = A.shape[-2:]
        stride, pad, dil = as_pair(args["stride"]), args["padding"], as_pair(args["dilation"])
        k = as_pair(m.kernel_size)
        in_hw = self.in_shape[-2:]
        out_pad = tuple(
            in_hw[i] - ((out_hw[i] - 1) * stride[i] - 2 * pad[i] + dil[i] * (k[i] - 1) + 1)
            for i in range(2)
        )
        flat = A.reshape(b * s, *A.shape[2:])
        res = F.conv_transpose2d(
            flat,
            m.weight,
            None,
            stride=stride,
            padding=pad,
            output_padding=out_pad,
            groups=m.groups,
            dilation=dil,
        )
        return res.view(b, s, *res.shape[1:])

    def bias_term(self, ctx: RunContext, A: Tensor) -> Tensor | None:
        """``A·b``: the bias of a channel meets the sum of its coefficients."""
        b = self.module.bias
        if b is None:
            return None
        return A.sum(dim=(-2, -1)).matmul(b)


class ReshapeOp(AffineOp):
    """Flatten / view / reshape that keeps the batch dimension."""

    mixing = False

    def __init__(self, name: str, in_shape: Sequence[int], out_shape: Sequence[int]) -> None:
        """Reshapes ``(B, *in_shape)`` to ``(B, *out_shape)``."""
        super().__init__(name)
        self.in_shape = tuple(in_shape)
        self.out_shape = tuple(out_shape)

    def apply(self, ctx: RunContext, x: Tensor) -> Tensor:
        """``x`` reshaped."""
        return x.reshape(x.shape[0], *self.out_shape)

    def apply_abs(self, ctx: RunContext, r: Tensor) -> Tensor:
        """``r`` reshaped."""
        return r.reshape(r.shape[0], *self.out_shape)

    def interval(self, ctx: RunContext, *ivs: Interval) -> Interval:
        """Both ends reshaped."""
        lo, hi = ivs[0]
        return self.apply(ctx, lo), self.apply(ctx, hi)

    def transpose(self, ctx: RunContext, A: Tensor) -> Tensor:
        """``A`` reshaped back to the input shape."""
        return A.reshape(A.shape[0], A.shape[1], *self.in_shape)


class AddOp(BoundOp):
    """``x + s·y`` of two perturbed tensors (``s = ±1``): residual connections."""

    def __init__(self, name: str, sign: float = 1.0) -> None:
        """An addition (``sign = 1``) or a subtraction (``sign = -1``)."""
        super().__init__(name)
        self.sign = float(sign)

    def forward(self, ctx: RunContext, *xs: Tensor) -> Tensor:
        """``x + y`` or ``x - y``."""
        return xs[0] + xs[1] if self.sign > 0 else xs[0] - xs[1]

    def interval(self, ctx: RunContext, *ivs: Interval) -> Interval:
        """Interval sum or difference."""
        (l1, u1), (l2, u2) = ivs
        if self.sign > 0:
            return l1 + l2, u1 + u2
        return l1 - u2, u1 - l2

    def box(self, ctx: RunContext, *boxes: Box, owned: bool = False) -> Box:
        """Centres add (or subtract), widths add."""
        (m1, w1), (m2, w2) = boxes
        return (m1 + m2 if self.sign > 0 else m1 - m2), w1 + w2

    def backward(
        self, ctx: RunContext, lA: Tensor | None, uA: Tensor | None, in_bounds: Sequence[Any]
    ) -> Backward:
        """The same coefficients for ``x`` and, negated for a subtraction, for ``y``."""
        if self.sign > 0:
            return [(lA, uA), (lA, uA)], 0.0, 0.0
        nl = None if lA is None else -lA
        nu = nl if uA is lA else (None if uA is None else -uA)
        return [(lA, uA), (nl, nu)], 0.0, 0.0


__all__ = ["AddOp", "AffineOp", "ConvOp", "DenseOp", "ReshapeOp", "conv_padding"]
