"""CROWN intermediate bounds of convolutional layers in "patches" form.

A neuron of a convolutional layer depends only on a window of the layer below (its receptive
field), so its backward coefficients can be stored as a small patch instead of a full feature map
(auto_LiRPA's ``conv_mode="patches"``; Xu et al., "Automatic Perturbation Analysis for Scalable
Certified Robustness and Beyond", NeurIPS 2020). For a chain ``input → (Normalize | BatchNorm |
Conv2d | ReLU)* → node`` the coefficients of neuron ``(c, i, j)`` at a layer of shape
``(C, H, W)`` live on the window of size ``K×K`` starting at ``(i·S - P, j·S - P)``, where
``K, S, P`` are the composite receptive-field size, stride and padding between that layer and the
node. Relaxation slopes, intercepts and the input box are cut into the same windows with
``F.unfold`` (zero padding, which also removes coefficients that fall on padding), and a
convolution is undone by a transposed convolution of each patch (no padding), which grows the
window to ``(K - 1)·s + d·(k - 1) + 1``.

The numbers are exactly those of the dense computation (up to floating-point rounding); only the
cost changes, from ``O(neurons × feature map)`` to ``O(neurons × window)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from advtrain.certify._graph import BoundGraph
from advtrain.certify._ops import (
    ConvOp,
    Interval,
    ReLUOp,
    RunContext,
    ScaleOp,
    _pair,
    conv_padding,
    relu_relaxation,
)
from advtrain.certify._spec import InputSet


def patch_chain(graph: BoundGraph, k: int) -> list[int] | None:
    """The nodes from ``k`` back to the input if they form a patch-friendly chain, else ``None``.

    Every node must have one input and a ``(C, H, W)`` shape, and be a convolution, an
    elementwise-affine layer (Normalize, BatchNorm, constant scaling) or a (leaky) ReLU; there
    must be at least one convolution.
    """
    chain = [k]
    node = graph.nodes[k]
    has_conv = False
    while chain[-1] != 0:
        node = graph.nodes[chain[-1]]
        if len(node.inputs) != 1 or len(node.shape) != 3:
            return None
        op = node.op
        if isinstance(op, ConvOp):
            has_conv = True
        elif not isinstance(op, (ScaleOp, ReLUOp)):
            return None
        chain.append(node.inputs[0])
    if len(graph.nodes[0].shape) != 3 or not has_conv:
        return None
    return chain


class _Window:
    """Composite receptive field ``(K, S, P)`` per spatial axis of the current layer."""

    def __init__(self) -> None:
        self.k = (1, 1)
        self.s = (1, 1)
        self.p = (0, 0)

    def through_conv(self, op: ConvOp) -> None:
        m = op.module
        ks, st, dl = _pair(m.kernel_size), _pair(m.stride), _pair(m.dilation)
        pad = conv_padding(m)
        self.k = tuple((self.k[a] - 1) * st[a] + dl[a] * (ks[a] - 1) + 1 for a in range(2))
        self.p = tuple(self.p[a] * st[a] + pad[a] for a in range(2))
        self.s = tuple(self.s[a] * st[a] for a in range(2))


def _cut(t: Tensor, win: _Window, cols: Tensor, out_hw: tuple[int, int]) -> Tensor | None:
    """Windows of ``t`` (``(B, C, H, W)``) for the start positions ``cols``: ``(B, N, C, K, K)``.

    Returns ``None`` if the windows do not line up with the start layer's positions.
    """
    b, c = t.shape[:2]
    unf = F.unfold(t, win.k, padding=win.p, stride=win.s)  # (B, C·K·K, L)
    if unf.shape[-1] != out_hw[0] * out_hw[1]:
        return None
    unf = unf.view(b, c, win.k[0], win.k[1], -1).permute(0, 4, 1, 2, 3)
    return unf[:, cols]


def patch_bounds(
    graph: BoundGraph,
    k: int,
    chain: list[int],
    bounds: dict[int, Interval],
    inputs: InputSet,
    ctx: RunContext,
    budget: int,
    chunk: int | None = None,
) -> Interval | None:
    """CROWN bounds of every neuron of node ``k`` through the chain ``chain`` (see module doc).

    Args:
        graph: The bound graph.
        k: The node to bound.
        chain: :func:`patch_chain` of ``k``.
        bounds: Pre-activation bounds of the ReLUs in the chain.
        inputs: The input set.
        ctx: Run context.
        budget: Largest number of coefficients held at once (sets the neuron chunk size).
        chunk: Neurons per pass (overrides ``budget``).

    Returns:
        ``(lower, upper)`` of shape ``(B, *shape_k)``, or ``None`` if the windows do not line up
        (the caller then uses the dense computation).
    """
    x = inputs.x
    batch = x.shape[0]
    c_k, h_k, w_k = graph.nodes[k].shape
    n_total = c_k * h_k * w_k
    # Window sizes along the chain, to size the chunks.
    win = _Window()
    largest = c_k
    for idx in chain[:-1]:
        op = graph.nodes[idx].op
        if isinstance(op, ConvOp):
            win.through_conv(op)
            c_in = graph.nodes[graph.nodes[idx].inputs[0]].shape[0]
            largest = max(largest, c_in * win.k[0] * win.k[1])
    if chunk is None:
        chunk = max(1, budget // (batch * largest))
    lows, ups = [], []
    for n0 in range(0, n_total, chunk):
        n = min(chunk, n_total - n0)
        idx = torch.arange(n0, n0 + n, device=x.device)
        res = _chunk_bounds(graph, chain, idx, (c_k, h_k, w_k), bounds, inputs, ctx)
        if res is None:
            return None
        lows.append(res[0])
        ups.append(res[1])
    shape = (batch, c_k, h_k, w_k)
    return torch.cat(lows, dim=1).view(shape), torch.cat(ups, dim=1).view(shape)


def _chunk_bounds(
    graph: BoundGraph,
    chain: list[int],
    idx: Tensor,
    shape_k: tuple[int, int, int],
    bounds: dict[int, Interval],
    inputs: InputSet,
    ctx: RunContext,
) -> Interval | None:
    c_k, h_k, w_k = shape_k
    x = inputs.x
    n = idx.numel()
    chan = idx // (h_k * w_k)
    cols = idx % (h_k * w_k)  # spatial position of each start neuron
    eye = torch.zeros((1, n, c_k, 1, 1), dtype=x.dtype, device=x.device)
    eye[0, torch.arange(n, device=x.device), chan] = 1.0
    lA: Tensor = eye
    uA: Tensor = eye
    lbias: Tensor | float = 0.0
    ubias: Tensor | float = 0.0
    win = _Window()
    out_hw = (h_k, w_k)
    for pos in range(len(chain) - 1):
        node = graph.nodes[chain[pos]]
        op = node.op
        _, h, w = node.shape
        if isinstance(op, ConvOp):
            # Drop coefficients on positions outside this layer's output (the next layer's
            # zero padding), add the bias, then undo the convolution patch by patch.
            ones = torch.ones((1, 1, h, w), dtype=x.dtype, device=x.device)
            mask = _cut(ones, win, cols, out_hw)
            if mask is None:
                return None
            shared = uA is lA
            lA = lA * mask
            uA = lA if shared else uA * mask
            b = op.module.bias
            if b is not None:
                lbias = lbias + lA.sum(dim=(-2, -1)).matmul(b)
                ubias = ubias + uA.sum(dim=(-2, -1)).matmul(b)
            lA, uA = _conv_t(op, lA, uA)
            win.through_conv(op)
        elif isinstance(op, ScaleOp):
            a, b = op.coeffs(ctx)
            if b is not None:  # z = a ⊙ x + b: the shift meets the coefficients of z
                b_full = b.expand(b.shape[0], *node.shape).contiguous()
                b_p = _cut(b_full, win, cols, out_hw)
                if b_p is None:
                    return None
                lbias = lbias + (lA * b_p).flatten(2).sum(-1)
                ubias = ubias + (uA * b_p).flatten(2).sum(-1)
            if a is not None:
                a_p = _cut(a.expand(1, *node.shape).contiguous(), win, cols, out_hw)
                if a_p is None:
                    return None
                shared = uA is lA
                lA = lA * a_p
                uA = lA if shared else uA * a_p
        else:  # ReLU / LeakyReLU
            assert isinstance(op, ReLUOp)
            lower, upper = bounds[node.inputs[0]]
            ud, ub, ld = relu_relaxation(lower, upper, ctx.relu_lower, op.leak)
            cut = [_cut(t, win, cols, out_hw) for t in (ud, ub, ld)]
            if any(t is None for t in cut):
                return None
            ud_p, ub_p, ld_p = cut  # type: ignore[misc]
            pos_l, neg_l = lA.clamp(min=0), lA.clamp(max=0)
            pos_u, neg_u = (pos_l, neg_l) if uA is lA else (uA.clamp(min=0), uA.clamp(max=0))
            lbias = lbias + (neg_l * ub_p).flatten(2).sum(-1)
            ubias = ubias + (pos_u * ub_p).flatten(2).sum(-1)
            lA = pos_l * ld_p + neg_l * ud_p
            uA = pos_u * ud_p + neg_u * ld_p
    # Concretise over the input windows (zero padding removes out-of-image coefficients).
    if inputs.norm == "linf":
        lo, hi = inputs.box(clip=True)
        center = _cut((hi + lo) / 2, win, cols, out_hw)
        diff = _cut((hi - lo) / 2, win, cols, out_hw)
        if center is None or diff is None:
            return None
        center, diff = center.flatten(2), diff.flatten(2)
        lower = (lA.flatten(2) * center).sum(-1) - (lA.flatten(2).abs() * diff).sum(-1)
        upper = (uA.flatten(2) * center).sum(-1) + (uA.flatten(2).abs() * diff).sum(-1)
    else:
        ones = torch.ones((1, *x.shape[1:]), dtype=x.dtype, device=x.device)
        mask = _cut(ones, win, cols, out_hw)
        xc = _cut(x, win, cols, out_hw)
        if mask is None or xc is None:
            return None
        lA, uA = lA * mask, uA * mask
        xc = xc.flatten(2)
        lower = (lA.flatten(2) * xc).sum(-1) - inputs.eps * lA.flatten(2).norm(dim=-1)
        upper = (uA.flatten(2) * xc).sum(-1) + inputs.eps * uA.flatten(2).norm(dim=-1)
    batch = x.shape[0]
    return (lower + lbias).expand(batch, -1), (upper + ubias).expand(batch, -1)


def _conv_t(op: ConvOp, lA: Tensor, uA: Tensor) -> tuple[Tensor, Tensor]:
    """Transposed convolution of every patch (no padding: the window grows)."""
    m = op.module

    def one(A: Tensor) -> Tensor:
        b, n = A.shape[:2]
        out = F.conv_transpose2d(
            A.reshape(b * n, *A.shape[2:]),
            m.weight,
            None,
            stride=m.stride,
            padding=0,
            groups=m.groups,
            dilation=m.dilation,
        )
        return out.view(b, n, *out.shape[1:])

    new_l = one(lA)
    return new_l, (new_l if uA is lA else one(uA))


__all__ = ["patch_bounds", "patch_chain"]
