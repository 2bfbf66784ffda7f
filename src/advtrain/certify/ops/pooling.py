"""Pooling layers: average pooling (affine) and max-pooling (a linear relaxation for CROWN)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from advtrain.certify.ops.affine import AffineOp
from advtrain.certify.ops.base import (
    Backward,
    BoundOp,
    Interval,
    RunContext,
    Size2,
    as_pair,
    pos_neg,
    sum_spec,
)


class AvgPoolOp(AffineOp):
    """``nn.AvgPool2d`` / ``F.avg_pool2d`` (and adaptive pooling that divides the input evenly).

    Weights are non-negative, so boxes map through the pooling itself. The transpose is a
    depthwise transposed convolution with the pooling's divisor (``ceil_mode=False`` only).
    """

    def __init__(
        self,
        name: str,
        in_shape: Sequence[int],
        kernel_size: Size2 | None,
        stride: Size2 | None = None,
        padding: Size2 = 0,
        ceil_mode: bool = False,
        count_include_pad: bool = True,
        divisor_override: int | None = None,
        adaptive_output: Any = None,
    ) -> None:
        """Average pooling with ``F.avg_pool2d``'s arguments on inputs of shape ``in_shape``.

        With ``adaptive_output`` it is adaptive pooling to that size, rewritten as a plain
        pooling when the size divides the input evenly.
        """
        super().__init__(name)
        self.in_shape = tuple(in_shape)
        self.adaptive_output = adaptive_output
        self.kernel = as_pair(kernel_size) if kernel_size is not None else None
        self.stride = as_pair(stride) if stride not in (None, []) else self.kernel
        self.padding = as_pair(padding)
        self.ceil_mode = bool(ceil_mode)
        self.count_include_pad = bool(count_include_pad)
        self.divisor_override = divisor_override
        if adaptive_output is not None:
            out = (
                as_pair(adaptive_output)
                if not isinstance(adaptive_output, int)
                else (adaptive_output, adaptive_output)
            )
            h, w = self.in_shape[-2:]
            oh = h if out[0] is None else out[0]
            ow = w if out[1] is None else out[1]
            if h % oh == 0 and w % ow == 0:
                self.kernel = (h // oh, w // ow)
                self.stride = self.kernel
                self.padding = (0, 0)
                self.adaptive_output = None

    def apply(self, ctx: RunContext, x: Tensor) -> Tensor:
        """The pooling itself."""
        if self.adaptive_output is not None:
            return F.adaptive_avg_pool2d(x, self.adaptive_output)
        return F.avg_pool2d(
            x,
            self.kernel,
            self.stride,
            self.padding,
            self.ceil_mode,
            self.count_include_pad,
            self.divisor_override,
        )

    def apply_abs(self, ctx: RunContext, r: Tensor) -> Tensor:
        """The pooling itself (its weights are non-negative)."""
        return self.apply(ctx, r)

    def interval(self, ctx: RunContext, *ivs: Interval) -> Interval:
        """Both ends pooled."""
        lo, hi = ivs[0]
        return self.apply(ctx, lo), self.apply(ctx, hi)

    def transpose(self, ctx: RunContext, A: Tensor) -> Tensor:
        """A depthwise transposed convolution of ``A`` divided by the pooling's divisor.

        Raises:
            NotImplementedError: For ``ceil_mode=True`` or an uneven adaptive pooling.
        """
        if self.adaptive_output is not None or self.ceil_mode:
            raise NotImplementedError(
                f"crown_bounds does not support {self.name} with ceil_mode=True or an adaptive "
                "output size that does not divide the input; use interval_bounds (IBP)"
            )
        assert self.kernel is not None
        b, s = A.shape[:2]
        c, h, w = self.in_shape
        out_hw = A.shape[-2:]
        flat = A.reshape(b * s, c, *out_hw)
        kh, kw = self.kernel
        if self.divisor_override:
            flat = flat / self.divisor_override
        elif self.count_include_pad or self.padding == (0, 0):
            flat = flat / (kh * kw)
        else:
            ones = torch.ones(1, 1, h, w, dtype=A.dtype, device=A.device)
            count = F.avg_pool2d(ones, self.kernel, self.stride, self.padding, divisor_override=1)
            flat = flat / count
        weight = torch.ones(c, 1, kh, kw, dtype=A.dtype, device=A.device)
        out_pad = tuple(
            (h, w)[i] - ((out_hw[i] - 1) * self.stride[i] - 2 * self.padding[i] + self.kernel[i])
            for i in range(2)
        )
        res = F.conv_transpose2d(
            flat,
            weight,
            None,
            stride=self.stride,
            padding=self.padding,
            output_padding=out_pad,
            groups=c,
        )
        return res.view(b, s, c, h, w)


class MaxPoolOp(BoundOp):
    """``nn.MaxPool2d`` / ``F.max_pool2d``: monotone for IBP; a linear relaxation for CROWN.

    CROWN relaxation (auto_LiRPA's ``BoundMaxPool``, extended to overlapping windows): the lower
    bound is the window element with the largest lower bound, ``y >= x_j``; the upper bound is
    ``y <= x_j`` when that element dominates (``l_j >= u_i`` for every other ``i``), else the
    constant ``y <= max_i u_i``.
    """

    needs_input_bounds = True

    def __init__(
        self,
        name: str,
        in_shape: Sequence[int],
        kernel_size: Size2,
        stride: Size2 | None = None,
        padding: Size2 = 0,
        dilation: Size2 = 1,
        ceil_mode: bool = False,
    ) -> None:
        """Max-pooling with ``F.max_pool2d``'s arguments on inputs of shape ``in_shape``."""
        super().__init__(name)
        self.in_shape = tuple(in_shape)
        self.kernel = as_pair(kernel_size)
        self.stride = as_pair(stride) if stride not in (None, []) else self.kernel
        self.padding = as_pair(padding)
        self.dilation = as_pair(dilation)
        self.ceil_mode = bool(ceil_mode)

    def forward(self, ctx: RunContext, *xs: Tensor) -> Tensor:
        """The pooling itself."""
        return F.max_pool2d(
            xs[0], self.kernel, self.stride, self.padding, self.dilation, self.ceil_mode
        )

    def interval(self, ctx: RunContext, *ivs: Interval) -> Interval:
        """Both ends pooled (max-pooling is monotone)."""
        lo, hi = ivs[0]
        return self.forward(ctx, lo), self.forward(ctx, hi)

    def _unfold(self, t: Tensor, fill: float) -> Tensor:
        """``(B, C, H, W)`` → windows ``(B, C, k·k, L)``, padding with ``fill``."""
        b, c = t.shape[:2]
        ph, pw = self.padding
        padded = F.pad(t, (pw, pw, ph, ph), value=fill)
        cols = F.unfold(
            padded.reshape(b * c, 1, *padded.shape[-2:]),
            self.kernel,
            self.dilation,
            0,
            self.stride,
        )
        return cols.view(b, c, cols.shape[1], cols.shape[2])

    def backward(
        self, ctx: RunContext, lA: Tensor | None, uA: Tensor | None, in_bounds: Sequence[Any]
    ) -> Backward:
        """The relaxation of the class docstring, scattered back onto the input positions.

        Raises:
            NotImplementedError: For ``ceil_mode=True``.
        """
        if self.ceil_mode:
            raise NotImplementedError(
                f"crown_bounds does not support {self.name} with ceil_mode=True; use "
                "interval_bounds (IBP)"
            )
        lower, upper = in_bounds[0]
        b, c, h, w = lower.shape
        neg_inf = float("-inf")
        lu = self._unfold(lower, neg_inf)
        uu = self._unfold(upper, neg_inf)
        # Flat input position of every window element (-1 on the padding).
        pos = torch.arange(h * w, device=lower.device, dtype=lower.dtype).view(1, 1, h, w)
        pos_cols = self._unfold(pos, -1.0)[0, 0].long()  # (k·k, L)
        l_sel, j = lu.max(dim=2)  # (B, C, L)
        u_other = uu.scatter(2, j.unsqueeze(2), neg_inf).amax(dim=2)
        u_max = uu.amax(dim=2)
        dom = (l_sel >= u_other).to(lower.dtype)
        bias_u = u_max * (1 - dom)
        idx = _select_positions(pos_cols, j)  # (B, C, L)
        n_out = j.shape[-1]

        def scatter(coef: Tensor) -> Tensor:
            s = coef.shape[1]
            out = coef.new_zeros(b, s, c, h * w)
            index = idx.unsqueeze(1).expand(b, s, c, n_out)
            out.scatter_add_(3, index, coef.reshape(b, s, c, n_out).expand(b, s, c, n_out))
            return out.view(b, s, c, h, w)

        dom_s, bias_s = dom.unsqueeze(1), bias_u.unsqueeze(1)
        new_l = new_u = None
        bl: Tensor | float = 0.0
        bu: Tensor | float = 0.0
        if lA is not None:
            A = lA.reshape(lA.shape[0], lA.shape[1], c, n_out)
            pos_a, neg_a = pos_neg(A)
            new_l = scatter(pos_a + neg_a * dom_s)
            bl = sum_spec(neg_a * bias_s)
        if uA is not None:
            A = uA.reshape(uA.shape[0], uA.shape[1], c, n_out)
            pos_a, neg_a = pos_neg(A)
            new_u = scatter(pos_a * dom_s + neg_a)
            bu = sum_spec(pos_a * bias_s)
        return [(new_l, new_u)], bl, bu


def _select_positions(pos_cols: Tensor, j: Tensor) -> Tensor:
    """Input positions of the selected window elements: ``pos_cols[j[..., o], o]``."""
    n_out = pos_cols.shape[1]
    cols = torch.arange(n_out, device=j.device).expand_as(j)
    return pos_cols[j, cols]


__all__ = ["AvgPoolOp", "MaxPoolOp"]
