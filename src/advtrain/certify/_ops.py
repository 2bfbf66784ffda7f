"""Bound operators: what each supported layer does to a point, a box and a linear bound.

Every node of a :class:`~advtrain.certify._graph.BoundGraph` holds one operator. An operator knows
three things about its layer:

* ``forward``: the layer on a concrete batch (used to learn shapes and BatchNorm batch statistics);
* ``interval``: the image of a box ``[l, u]`` (interval bound propagation, Gowal et al. 2018);
* ``backward``: how a linear bound ``A·z + c`` on its output becomes one on its input (CROWN,
  Zhang et al. 2018): exactly for affine layers, through a linear relaxation for ReLU and max-pool.

Linear coefficient tensors ``A`` have shape ``(B_A, S, *node_shape)``: ``S`` specifications (rows of
the spec matrix, or neurons of an intermediate layer) per example, and ``B_A`` either the batch
size or 1 while ``A`` is still the same for every example (before the first relaxation). Bias terms
have shape ``(B_A, S)`` or are the scalar 0.

The ReLU relaxation follows auto_LiRPA's ``BoundRelu`` exactly: the upper line passes through
``(l, 0)`` and ``(u, u)``, computed as ``d = u⁺ / (u⁺ - l⁻)`` with ``u⁺ = max(u, 0, l⁻ + 1e-8)``,
``l⁻ = min(l, 0)``; the lower line is ``y >= a·x`` with the adaptive slope ``a = 1`` when
``d > 1/2`` (i.e. ``u > -l``) and 0 otherwise (``relu_lower="adaptive"``; ``"zero"`` and ``"one"``
are auto_LiRPA's ``zero-lb``/``one-lb``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

Interval = tuple[Tensor, Tensor]
#: A box in centre/width form ``(mu, w)``: ``mu = (l + u) / 2`` and ``w = u - l >= 0``. IBP
#: propagates boxes in this form: an affine layer needs one product with ``M`` and one with
#: ``|M|`` and no elementwise pass (Gowal et al. 2018, Eq. 4-5).
Box = tuple[Tensor, Tensor]
#: Linear bound coefficients for the lower and the upper bound (either may be ``None``).
APair = tuple[Tensor | None, Tensor | None]

RELU_LOWER: tuple[str, ...] = ("adaptive", "zero", "one")


@dataclass
class RunContext:
    """Per-call state shared by the operators of one graph.

    Attributes:
        batch_stats: Use batch statistics for BatchNorm layers in training mode (the statistics
            of the clean batch, the affine map BatchNorm applies in the model's own forward
            pass). When ``False``, a BatchNorm layer in training mode is an error.
        bn: BatchNorm affine maps ``(scale, shift)`` computed from the clean batch, by node index.
        relu_lower: Lower-slope rule of the ReLU relaxation.
    """

    batch_stats: bool = False
    bn: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict)
    relu_lower: str = "adaptive"


def _sum_spec(t: Tensor) -> Tensor:
    """Sums a ``(B, S, ...)`` tensor over everything but its first two dimensions."""
    return t.flatten(2).sum(dim=2) if t.dim() > 2 else t


def box_to_interval(box: Box) -> Interval:
    """``(mu, w)`` → ``(mu - w/2, mu + w/2)`` (fresh tensors)."""
    mu, w = box
    return torch.sub(mu, w, alpha=0.5), torch.add(mu, w, alpha=0.5)


def interval_to_box(iv: Interval) -> Box:
    """``(l, u)`` → ``((l + u)/2, u - l)`` (fresh tensors)."""
    lo, hi = iv
    return torch.add(hi, lo).mul_(0.5), torch.sub(hi, lo)


def _pos_neg(a: Tensor) -> tuple[Tensor, Tensor]:
    return a.clamp(min=0), a.clamp(max=0)


class BoundOp:
    """Base class: one layer of a bound graph.

    Attributes:
        name: ``qualified.name (LayerType)``, used in error messages.
        index: The node index in its graph (set by the graph).
        needs_input_bounds: CROWN needs bounds on the input of this layer (nonlinear layers).
        elementwise: The layer acts coordinate-wise (and keeps the shape).
    """

    needs_input_bounds = False
    elementwise = False

    def __init__(self, name: str) -> None:
        self.name = name
        self.index = -1

    def forward(self, ctx: RunContext, *xs: Tensor) -> Tensor:
        """The layer on a concrete batch."""
        raise NotImplementedError

    def interval(self, ctx: RunContext, *ivs: Interval) -> Interval:
        """The image of the boxes ``ivs`` (one per input)."""
        raise NotImplementedError

    def box(self, ctx: RunContext, *boxes: Box, owned: bool = False) -> Box:
        """The image of boxes in centre/width form (:data:`Box`), one per input.

        ``owned``: the caller owns the input tensors (fresh, read by nobody else); an operator
        may then overwrite them. The default goes through :meth:`interval`.
        """
        return interval_to_box(self.interval(ctx, *[box_to_interval(b) for b in boxes]))

    def backward(
        self, ctx: RunContext, lA: Tensor | None, uA: Tensor | None, in_bounds: Sequence[Any]
    ) -> tuple[list[APair], Tensor | float, Tensor | float]:
        """Maps linear bounds on the output to linear bounds on each input.

        Returns:
            ``([(lA_i, uA_i) per input], lower_bias, upper_bias)``.
        """
        raise NotImplementedError(
            f"crown_bounds does not support the layer {self.name}; use interval_bounds (IBP), "
            "which supports it, or replace the layer"
        )


class InputOp(BoundOp):
    """The perturbed input."""

    def forward(self, ctx: RunContext, *xs: Tensor) -> Tensor:
        return xs[0]


# ------------------------------------------------------------------------------------------------
# Affine layers
# ------------------------------------------------------------------------------------------------
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
        raise NotImplementedError

    def apply_abs(self, ctx: RunContext, r: Tensor) -> Tensor:
        raise NotImplementedError

    def transpose(self, ctx: RunContext, A: Tensor) -> Tensor:
        raise NotImplementedError

    def bias_term(self, ctx: RunContext, A: Tensor) -> Tensor | None:
        return None

    def forward(self, ctx: RunContext, *xs: Tensor) -> Tensor:
        return self.apply(ctx, xs[0])

    def interval(self, ctx: RunContext, *ivs: Interval) -> Interval:
        return box_to_interval(self.box(ctx, interval_to_box(ivs[0])))

    def box(self, ctx: RunContext, *boxes: Box, owned: bool = False) -> Box:
        """``(M·mu + b, |M|·w)``: exact for the centre/width form of a box."""
        mu, w = boxes[0]
        return self.apply(ctx, mu), self.apply_abs(ctx, w)

    def backward(
        self, ctx: RunContext, lA: Tensor | None, uA: Tensor | None, in_bounds: Sequence[Any]
    ) -> tuple[list[APair], Tensor | float, Tensor | float]:
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
        super().__init__(name)
        self.module = module

    def apply(self, ctx: RunContext, x: Tensor) -> Tensor:
        return F.linear(x, self.module.weight, self.module.bias)

    def apply_abs(self, ctx: RunContext, r: Tensor) -> Tensor:
        return F.linear(r, self.module.weight.abs())

    def transpose(self, ctx: RunContext, A: Tensor) -> Tensor:
        return A.matmul(self.module.weight)

    def bias_term(self, ctx: RunContext, A: Tensor) -> Tensor | None:
        b = self.module.bias
        return None if b is None else _sum_spec(A.matmul(b))

    def folded(self, C: Tensor) -> tuple[Tensor, Tensor | None]:
        """The weights ``C·W`` and bias ``C·b`` of this layer followed by the spec ``C``."""
        W = C.matmul(self.module.weight)
        b = self.module.bias
        return W, None if b is None else C.matmul(b)


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, int):
        return v, v
    return int(v[0]), int(v[1])


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
        dil, ker = _pair(module.dilation), _pair(module.kernel_size)
        total = [d * (k - 1) for d, k in zip(dil, ker, strict=True)]
        if any(t % 2 for t in total):
            raise ValueError(
                f"{module} uses padding='same' with an even receptive field (asymmetric "
                "padding), which bound propagation does not support; pad explicitly"
            )
        return total[0] // 2, total[1] // 2
    return _pair(pad)


class ConvOp(AffineOp):
    """``nn.Conv2d`` with zero padding; its transpose is a transposed convolution."""

    def __init__(self, name: str, module: nn.Conv2d, in_shape: Sequence[int]) -> None:
        super().__init__(name)
        self.module = module
        self.in_shape = tuple(in_shape)
        conv_padding(module)  # validate early

    def _args(self) -> dict[str, Any]:
        m = self.module
        return {
            "stride": m.stride,
            "padding": conv_padding(m),
            "dilation": m.dilation,
            "groups": m.groups,
        }

    def apply(self, ctx: RunContext, x: Tensor) -> Tensor:
        return F.conv2d(x, self.module.weight, self.module.bias, **self._args())

    def apply_abs(self, ctx: RunContext, r: Tensor) -> Tensor:
        return F.conv2d(r, self.module.weight.abs(), None, **self._args())

    def transpose(self, ctx: RunContext, A: Tensor) -> Tensor:
        m = self.module
        args = self._args()
        b, s = A.shape[:2]
        out_hw = A.shape[-2:]
        stride, pad, dil = _pair(args["stride"]), args["padding"], _pair(args["dilation"])
        k = _pair(m.kernel_size)
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
        b = self.module.bias
        if b is None:
            return None
        return A.sum(dim=(-2, -1)).matmul(b)


class ScaleOp(AffineOp):
    """Elementwise affine map ``z = a ⊙ x + b`` (constants broadcast over the batch).

    ``coeffs(ctx)`` returns ``(a, b)``, each ``None`` or a tensor of shape ``(1 or B, ...)``
    broadcastable against ``(B, *shape)``; ``a`` must not vary over the batch.
    """

    mixing = False

    def __init__(
        self,
        name: str,
        coeffs: Callable[[RunContext], tuple[Tensor | None, Tensor | None]],
    ) -> None:
        super().__init__(name)
        self.coeffs = coeffs

    def apply(self, ctx: RunContext, x: Tensor) -> Tensor:
        a, b = self.coeffs(ctx)
        out = x if a is None else x * a
        return out if b is None else out + b

    def apply_abs(self, ctx: RunContext, r: Tensor) -> Tensor:
        a, _ = self.coeffs(ctx)
        return r if a is None else r * a.abs()

    def interval(self, ctx: RunContext, *ivs: Interval) -> Interval:
        lo, hi = ivs[0]
        a, b = self.coeffs(ctx)
        if a is not None:
            lo, hi = lo * a, hi * a
            lo, hi = torch.minimum(lo, hi), torch.maximum(lo, hi)
        if b is not None:
            lo, hi = lo + b, hi + b
        return lo, hi

    def transpose(self, ctx: RunContext, A: Tensor) -> Tensor:
        a, _ = self.coeffs(ctx)
        return A if a is None else A * a.unsqueeze(1)

    def bias_term(self, ctx: RunContext, A: Tensor) -> Tensor | None:
        _, b = self.coeffs(ctx)
        if b is None:
            return None
        return _sum_spec(A * b.unsqueeze(1))


class NormalizeOp(ScaleOp):
    """:class:`advtrain.models.Normalize`: ``(x - mean) / std``, computed as the module does."""

    def __init__(self, name: str, module: nn.Module, in_shape: Sequence[int]) -> None:
        self.module = module
        self.flat = len(in_shape) == 1
        super().__init__(name, self._coeffs)

    def _stats(self) -> tuple[Tensor, Tensor]:
        mean, std = self.module.mean, self.module.std
        if self.flat:
            mean, std = mean.view(1, -1), std.view(1, -1)
        return mean, std

    def _coeffs(self, ctx: RunContext) -> tuple[Tensor, Tensor]:
        mean, std = self._stats()
        return 1.0 / std, -mean / std

    def apply(self, ctx: RunContext, x: Tensor) -> Tensor:
        mean, std = self._stats()
        return (x - mean) / std

    def interval(self, ctx: RunContext, *ivs: Interval) -> Interval:
        lo, hi = ivs[0]
        return self.apply(ctx, lo), self.apply(ctx, hi)  # std > 0: increasing


class BatchNormOp(ScaleOp):
    """``nn.BatchNorm1d/2d`` folded into ``a ⊙ x + b``.

    Eval mode: ``a = γ / sqrt(running_var + ε)``, ``b = β - running_mean·a`` (exact). In training
    mode (or without running statistics) BatchNorm normalises with the batch's own statistics;
    bounds are then only meaningful for a fixed affine map, so this is an error unless the run
    context asks for batch statistics, in which case the clean batch's mean and (biased)
    variance define the map, exactly the one the model's own forward pass applies.
    """

    def __init__(self, name: str, module: _BatchNorm, in_shape: Sequence[int]) -> None:
        self.module = module
        self.view = (-1,) + (1,) * (len(in_shape) - 1)
        self.reduce = (0, *range(2, len(in_shape) + 1))
        super().__init__(name, self._coeffs)

    def uses_batch_stats(self) -> bool:
        m = self.module
        return bool(m.training or not m.track_running_stats or m.running_mean is None)

    def _fold(self, mean: Tensor, var: Tensor) -> tuple[Tensor, Tensor]:
        m = self.module
        inv = torch.rsqrt(var + m.eps)
        a = inv if m.weight is None else m.weight * inv
        b = -mean * a if m.bias is None else m.bias - mean * a
        return a.view(1, *self.view), b.view(1, *self.view)

    def _coeffs(self, ctx: RunContext) -> tuple[Tensor, Tensor]:
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
        x = xs[0]
        if self.uses_batch_stats() and ctx.batch_stats:
            var, mean = torch.var_mean(x, dim=self.reduce, unbiased=False)
            ctx.bn[self.index] = self._fold(mean, var)
        return self.apply(ctx, x)


class ReshapeOp(AffineOp):
    """Flatten / view / reshape that keeps the batch dimension."""

    mixing = False

    def __init__(self, name: str, in_shape: Sequence[int], out_shape: Sequence[int]) -> None:
        super().__init__(name)
        self.in_shape = tuple(in_shape)
        self.out_shape = tuple(out_shape)

    def apply(self, ctx: RunContext, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], *self.out_shape)

    def apply_abs(self, ctx: RunContext, r: Tensor) -> Tensor:
        return r.reshape(r.shape[0], *self.out_shape)

    def interval(self, ctx: RunContext, *ivs: Interval) -> Interval:
        lo, hi = ivs[0]
        return self.apply(ctx, lo), self.apply(ctx, hi)

    def transpose(self, ctx: RunContext, A: Tensor) -> Tensor:
        return A.reshape(A.shape[0], A.shape[1], *self.in_shape)


class AvgPoolOp(AffineOp):
    """``nn.AvgPool2d`` / ``F.avg_pool2d`` (and adaptive pooling that divides the input evenly).

    Weights are non-negative, so boxes map through the pooling itself. The transpose is a
    depthwise transposed convolution with the pooling's divisor (``ceil_mode=False`` only).
    """

    def __init__(
        self,
        name: str,
        in_shape: Sequence[int],
        kernel_size: Any,
        stride: Any = None,
        padding: Any = 0,
        ceil_mode: bool = False,
        count_include_pad: bool = True,
        divisor_override: int | None = None,
        adaptive_output: Any = None,
    ) -> None:
        super().__init__(name)
        self.in_shape = tuple(in_shape)
        self.adaptive_output = adaptive_output
        self.kernel = _pair(kernel_size) if kernel_size is not None else None
        self.stride = _pair(stride) if stride not in (None, []) else self.kernel
        self.padding = _pair(padding)
        self.ceil_mode = bool(ceil_mode)
        self.count_include_pad = bool(count_include_pad)
        self.divisor_override = divisor_override
        if adaptive_output is not None:
            out = (
                _pair(adaptive_output)
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
        return self.apply(ctx, r)

    def interval(self, ctx: RunContext, *ivs: Interval) -> Interval:
        lo, hi = ivs[0]
        return self.apply(ctx, lo), self.apply(ctx, hi)

    def transpose(self, ctx: RunContext, A: Tensor) -> Tensor:
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


class AddOp(BoundOp):
    """``x + s·y`` of two perturbed tensors (``s = ±1``): residual connections."""

    def __init__(self, name: str, sign: float = 1.0) -> None:
        super().__init__(name)
        self.sign = float(sign)

    def forward(self, ctx: RunContext, *xs: Tensor) -> Tensor:
        return xs[0] + xs[1] if self.sign > 0 else xs[0] - xs[1]

    def interval(self, ctx: RunContext, *ivs: Interval) -> Interval:
        (l1, u1), (l2, u2) = ivs
        if self.sign > 0:
            return l1 + l2, u1 + u2
        return l1 - u2, u1 - l2

    def box(self, ctx: RunContext, *boxes: Box, owned: bool = False) -> Box:
        (m1, w1), (m2, w2) = boxes
        return (m1 + m2 if self.sign > 0 else m1 - m2), w1 + w2

    def backward(
        self, ctx: RunContext, lA: Tensor | None, uA: Tensor | None, in_bounds: Sequence[Any]
    ) -> tuple[list[APair], Tensor | float, Tensor | float]:
        if self.sign > 0:
            return [(lA, uA), (lA, uA)], 0.0, 0.0
        nl = None if lA is None else -lA
        nu = nl if uA is lA else (None if uA is None else -uA)
        return [(lA, uA), (nl, nu)], 0.0, 0.0


# ------------------------------------------------------------------------------------------------
# Nonlinear layers
# ------------------------------------------------------------------------------------------------
class MonotoneOp(BoundOp):
    """An elementwise non-decreasing activation: boxes map endpoint to endpoint (IBP only)."""

    needs_input_bounds = True
    elementwise = True

    def __init__(self, name: str, fn: Callable[[Tensor], Tensor]) -> None:
        super().__init__(name)
        self.fn = fn

    def forward(self, ctx: RunContext, *xs: Tensor) -> Tensor:
        return self.fn(xs[0])

    def interval(self, ctx: RunContext, *ivs: Interval) -> Interval:
        lo, hi = ivs[0]
        return self.fn(lo), self.fn(hi)


def relu_relaxation(
    lower: Tensor, upper: Tensor, rule: str = "adaptive", leak: float = 0.0
) -> tuple[Tensor, Tensor, Tensor]:
    """CROWN's linear relaxation of (leaky) ReLU on ``[lower, upper]``, as in auto_LiRPA.

    Returns:
        ``(upper_slope, upper_intercept, lower_slope)``: ``slope_u·x + intercept_u`` is an upper
        and ``slope_l·x`` a lower bound of the activation on the interval.
    """
    lb_r = lower.clamp(max=0)
    ub_r = torch.maximum(upper.clamp(min=0), lb_r + 1e-8)
    if leak > 0:
        upper_d = (ub_r - leak * lb_r) / (ub_r - lb_r)
        upper_b = -lb_r * upper_d + leak * lb_r
    else:
        upper_d = ub_r / (ub_r - lb_r)
        upper_b = -lb_r * upper_d
    if rule == "adaptive":
        lower_d = (upper_d > 0.5).to(upper_d)
    elif rule == "zero":
        lower_d = (upper_d >= 1.0).to(upper_d)
    else:  # "one"
        lower_d = (upper_d > leak).to(upper_d)
    if leak > 0:
        lower_d = lower_d + (lower_d == 0).to(upper_d) * leak
    return upper_d, upper_b, lower_d


class ReLUOp(MonotoneOp):
    """ReLU / LeakyReLU (``0 <= negative_slope <= 1``) with the CROWN relaxation."""

    def __init__(self, name: str, leak: float = 0.0) -> None:
        self.leak = float(leak)
        fn: Callable[[Tensor], Tensor] = (
            F.relu if self.leak == 0 else (lambda t: F.leaky_relu(t, self.leak))
        )
        super().__init__(name, fn)

    def box(self, ctx: RunContext, *boxes: Box, owned: bool = False) -> Box:
        """ReLU of a centre/width box in four elementwise passes and no temporaries.

        With ``c, w`` the input box and ``u = relu(c + w/2)`` the upper end of the output, the
        output width ``relu(c + w/2) - relu(c - w/2)`` equals ``min(u, w)`` (both are ``w`` when
        the neuron is active, 0 when inactive, ``u`` when unstable) and the output centre is
        ``u - width/2``. Same numbers as the endpoint form up to rounding.
        """
        if self.leak != 0:
            return super().box(ctx, *boxes, owned=owned)
        c, w = boxes[0]
        if not owned:
            upper = torch.add(c, w, alpha=0.5).relu_()
        else:
            upper = c.add_(w, alpha=0.5).relu_()
            if not (torch.is_grad_enabled() and (c.requires_grad or w.requires_grad)):
                width = torch.minimum(upper, w, out=w)
                return upper.sub_(width, alpha=0.5), width
        width = torch.minimum(upper, w)
        return torch.sub(upper, width, alpha=0.5), width

    def backward(
        self, ctx: RunContext, lA: Tensor | None, uA: Tensor | None, in_bounds: Sequence[Any]
    ) -> tuple[list[APair], Tensor | float, Tensor | float]:
        lower, upper = in_bounds[0]
        ud, ub, ld = relu_relaxation(lower, upper, ctx.relu_lower, self.leak)
        ud, ld = ud.unsqueeze(1), ld.unsqueeze(1)
        ub_col = ub.flatten(1).unsqueeze(-1)  # (B, n, 1): intercepts as a column for matmul
        new_l = new_u = None
        bias_l: Tensor | float = 0.0
        bias_u: Tensor | float = 0.0
        # Positive coefficients take the lower line for the lower bound and the upper line for
        # the upper bound, negative ones the other way round (Zhang et al. 2018, Theorem 3.2).
        parts_l = _pos_neg(lA) if lA is not None else None
        parts_u = parts_l if uA is lA else (_pos_neg(uA) if uA is not None else None)
        if parts_l is not None:
            pos, neg = parts_l
            new_l = pos * ld
            new_l.addcmul_(neg, ud)
            bias_l = neg.flatten(2).matmul(ub_col).squeeze(-1)
        if parts_u is not None:
            pos, neg = parts_u
            new_u = pos * ud
            new_u.addcmul_(neg, ld)
            bias_u = pos.flatten(2).matmul(ub_col).squeeze(-1)
        return [(new_l, new_u)], bias_l, bias_u


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
        kernel_size: Any,
        stride: Any = None,
        padding: Any = 0,
        dilation: Any = 1,
        ceil_mode: bool = False,
    ) -> None:
        super().__init__(name)
        self.in_shape = tuple(in_shape)
        self.kernel = _pair(kernel_size)
        self.stride = _pair(stride) if stride not in (None, []) else self.kernel
        self.padding = _pair(padding)
        self.dilation = _pair(dilation)
        self.ceil_mode = bool(ceil_mode)

    def forward(self, ctx: RunContext, *xs: Tensor) -> Tensor:
        return F.max_pool2d(
            xs[0], self.kernel, self.stride, self.padding, self.dilation, self.ceil_mode
        )

    def interval(self, ctx: RunContext, *ivs: Interval) -> Interval:
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
    ) -> tuple[list[APair], Tensor | float, Tensor | float]:
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
            pos_a, neg_a = _pos_neg(A)
            new_l = scatter(pos_a + neg_a * dom_s)
            bl = _sum_spec(neg_a * bias_s)
        if uA is not None:
            A = uA.reshape(uA.shape[0], uA.shape[1], c, n_out)
            pos_a, neg_a = _pos_neg(A)
            new_u = scatter(pos_a * dom_s + neg_a)
            bu = _sum_spec(pos_a * bias_s)
        return [(new_l, new_u)], bl, bu


def _select_positions(pos_cols: Tensor, j: Tensor) -> Tensor:
    """Input positions of the selected window elements: ``pos_cols[j[..., o], o]``."""
    n_out = pos_cols.shape[1]
    cols = torch.arange(n_out, device=j.device).expand_as(j)
    return pos_cols[j, cols]


__all__ = [
    "RELU_LOWER",
    "AddOp",
    "AffineOp",
    "AvgPoolOp",
    "BatchNormOp",
    "BoundOp",
    "Box",
    "ConvOp",
    "DenseOp",
    "InputOp",
    "MaxPoolOp",
    "MonotoneOp",
    "NormalizeOp",
    "ReLUOp",
    "ReshapeOp",
    "RunContext",
    "ScaleOp",
    "box_to_interval",
    "interval_to_box",
    "relu_relaxation",
]
