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

from advtrain.certify.graph import BoundGraph, Node
from advtrain.certify.ops import (
    ConvOp,
    Interval,
    ReLUOp,
    RunContext,
    ScaleOp,
    as_pair,
    conv_padding,
    pos_neg,
    relu_relaxation,
)
from advtrain.certify.spec import InputSet


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
        """The window of the start layer itself: ``K = S = 1``, ``P = 0``."""
        self.k: tuple[int, ...] = (1, 1)
        self.s: tuple[int, ...] = (1, 1)
        self.p: tuple[int, ...] = (0, 0)

    def through_conv(self, op: ConvOp) -> None:
        """Grows the window through the convolution ``op``."""
        m = op.module
        ks, st, dl = as_pair(m.kernel_size), as_pair(m.stride), as_pair(m.dilation)
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
    for node_idx in chain[:-1]:
        op = graph.nodes[node_idx].op
        if isinstance(op, ConvOp):
            win.through_conv(op)
            c_in = graph.nodes[graph.nodes[node_idx].inputs[0]].shape[0]
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
    """CROWN bounds of the neurons ``idx`` (flat indices into ``shape_k``) of the chain's start.

    Returns:
        ``(lower, upper)``, each ``(B, len(idx))``, or ``None`` if the windows do not line up.
    """
    state = _PatchPass(idx, shape_k, inputs.x)
    for pos in range(len(chain) - 1):
        node = graph.nodes[chain[pos]]
        op = node.op
        if isinstance(op, ConvOp):
            aligned = state.through_conv(op, node)
        elif isinstance(op, ScaleOp):
            aligned = state.through_scale(op, node, ctx)
        else:  # ReLU / LeakyReLU
            assert isinstance(op, ReLUOp)
            aligned = state.through_relu(op, bounds[node.inputs[0]], ctx)
        if not aligned:
            return None
    return state.concretize(inputs)


class _PatchPass:
    """The backward pass of a chunk of start neurons, on patches.

    Every ``through_*`` step moves the coefficients ``lA``/``uA`` (``(1 or B, N, C, K, K)``)
    and the biases below one layer; it returns ``False`` if the windows do not line up.
    """

    def __init__(self, idx: Tensor, shape_k: tuple[int, int, int], x: Tensor) -> None:
        """Starts from the identity on the neurons ``idx`` of a layer of shape ``shape_k``."""
        c_k, h_k, w_k = shape_k
        n = idx.numel()
        chan = idx // (h_k * w_k)
        self.cols = idx % (h_k * w_k)  # spatial position of each start neuron
        eye = torch.zeros((1, n, c_k, 1, 1), dtype=x.dtype, device=x.device)
        eye[0, torch.arange(n, device=x.device), chan] = 1.0
        self.lA: Tensor = eye
        self.uA: Tensor = eye
        self.lbias: Tensor | float = 0.0
        self.ubias: Tensor | float = 0.0
        self.win = _Window()
        self.out_hw = (h_k, w_k)
        self.dtype, self.device = x.dtype, x.device

    def cut(self, t: Tensor) -> Tensor | None:
        """:func:`_cut` of ``t`` with the current window."""
        return _cut(t, self.win, self.cols, self.out_hw)

    def scale(self, factor: Tensor) -> None:
        """Multiplies both coefficient tensors by ``factor`` (once when they are shared)."""
        shared = self.uA is self.lA
        self.lA = self.lA * factor
        self.uA = self.lA if shared else self.uA * factor

    def through_conv(self, op: ConvOp, node: Node) -> bool:
        """Through a convolution.

        Drops the coefficients on positions outside this layer's output (the next layer's zero
        padding), adds the bias, then undoes the convolution patch by patch.
        """
        _, h, w = node.shape
        mask = self.cut(torch.ones((1, 1, h, w), dtype=self.dtype, device=self.device))
        if mask is None:
            return False
        self.scale(mask)
        b = op.module.bias
        if b is not None:
            self.lbias = self.lbias + self.lA.sum(dim=(-2, -1)).matmul(b)
            self.ubias = self.ubias + self.uA.sum(dim=(-2, -1)).matmul(b)
        self.lA, self.uA = _conv_t(op, self.lA, self.uA)
        self.win.through_conv(op)
        return True

    def through_scale(self, op: ScaleOp, node: Node, ctx: RunContext) -> bool:
        """Through ``z = a ⊙ x + b``: the shift meets the coefficients of ``z``, then scale."""
        a, b = op.coeffs(ctx)
        if b is not None:
            b_p = self.cut(b.expand(b.shape[0], *node.shape).contiguous())
            if b_p is None:
                return False
            self.lbias = self.lbias + (self.lA * b_p).flatten(2).sum(-1)
            self.ubias = self.ubias + (self.uA * b_p).flatten(2).sum(-1)
        if a is not None:
            a_p = self.cut(a.expand(1, *node.shape).contiguous())
            if a_p is None:
                return False
            self.scale(a_p)
        return True

    def through_relu(self, op: ReLUOp, pre: Interval, ctx: RunContext) -> bool:
        """Through a (leaky) ReLU with pre-activation bounds ``pre``: its CROWN relaxation."""
        ud, ub, ld = relu_relaxation(pre[0], pre[1], ctx.relu_lower, op.leak)
        ud_p, ub_p, ld_p = (self.cut(t) for t in (ud, ub, ld))
        if ud_p is None or ub_p is None or ld_p is None:
            return False
        pos_l, neg_l = pos_neg(self.lA)
        pos_u, neg_u = (pos_l, neg_l) if self.uA is self.lA else pos_neg(self.uA)
        self.lbias = self.lbias + (neg_l * ub_p).flatten(2).sum(-1)
        self.ubias = self.ubias + (pos_u * ub_p).flatten(2).sum(-1)
        self.lA = pos_l * ld_p + neg_l * ud_p
        self.uA = pos_u * ud_p + neg_u * ld_p
        return True

    def concretize(self, inputs: InputSet) -> Interval | None:
        """Concretises over the input windows (zero padding removes out-of-image coefficients)."""
        x = inputs.x
        lA, uA = self.lA, self.uA
        if inputs.norm == "linf":
            lo, hi = inputs.box(clip=True)
            center = self.cut((hi + lo) / 2)
            diff = self.cut((hi - lo) / 2)
            if center is None or diff is None:
                return None
            center, diff = center.flatten(2), diff.flatten(2)
            lower = (lA.flatten(2) * center).sum(-1) - (lA.flatten(2).abs() * diff).sum(-1)
            upper = (uA.flatten(2) * center).sum(-1) + (uA.flatten(2).abs() * diff).sum(-1)
        else:
            mask = self.cut(torch.ones((1, *x.shape[1:]), dtype=x.dtype, device=x.device))
            xc = self.cut(x)
            if mask is None or xc is None:
                return None
            lA, uA = lA * mask, uA * mask
            xc = xc.flatten(2)
            lower = (lA.flatten(2) * xc).sum(-1) - inputs.eps * lA.flatten(2).norm(dim=-1)
            upper = (uA.flatten(2) * xc).sum(-1) + inputs.eps * uA.flatten(2).norm(dim=-1)
        batch = x.shape[0]
        return (lower + self.lbias).expand(batch, -1), (upper + self.ubias).expand(batch, -1)


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
