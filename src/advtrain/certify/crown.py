"""CROWN and CROWN-IBP: backward linear bound propagation with ReLU relaxations.

References:
    Zhang, Weng, Chen, Hsieh & Daniel, "Efficient Neural Network Robustness Certification with
    General Activation Functions", NeurIPS 2018 (CROWN): bound every output (or spec row) by a
    linear function of the input, propagated backwards layer by layer; an unstable ReLU
    (``l < 0 < u``) is replaced by an upper line through ``(l, 0)`` and ``(u, u)`` and a lower
    line ``y >= a·x`` with the adaptive slope ``a = 1`` if ``u > -l`` else 0; the pre-activation
    bounds ``l, u`` of every layer are themselves computed by CROWN.
    Zhang, Chen, Xiao, Gowal, Stanforth, Li, Boning & Hsieh, "Towards Stable and Efficient
    Training of Verifiably Robust Neural Networks", ICLR 2020 (CROWN-IBP): intermediate bounds by
    IBP, the final spec by a CROWN backward pass.

The computation follows auto_LiRPA's ``compute_bounds(method="CROWN")`` (or ``"CROWN-IBP"``) with
``bound_opts={"sparse_intermediate_bounds": False}``, i.e. the textbook definition in which every
intermediate neuron is bounded by CROWN. (auto_LiRPA's default additionally keeps IBP bounds for
neurons that IBP already proves stable for the whole batch; since CROWN is not always tighter than
IBP, that can change results in rare cases.) ``python -m scripts.bench.compare_auto_lirpa`` runs
auto_LiRPA 0.3 itself on MLPs and CNNs with and without BatchNorm: for ``linf`` IBP, CROWN and
CROWN-IBP agree to 1e-15 relative in float64 (BENCHMARKS.md). Conventions shared with auto_LiRPA:

* ``linf``: the input domain is the box ``x_L = max(x - eps, low)``, ``x_U = min(x + eps, high)``;
  a linear bound ``A·x' + c`` is concretised as ``A·(x_U + x_L)/2 ∓ |A|·(x_U - x_L)/2 + c``;
* ``l2``: concretised with the dual norm, ``A·x ∓ eps·||A||₂ + c``; the input box is *not* used
  (auto_LiRPA ignores ``x_L``/``x_U`` for L2), so the bound holds on the whole ball;
* the ReLU relaxation of ``BoundRelu`` (see :func:`advtrain.certify.ops.relu_relaxation`);
* bounds of a layer that only sees the input through elementwise-affine layers and a single
  linear/convolution layer are computed directly (interval arithmetic is exact there, as in
  auto_LiRPA's first-linear-layer shortcut), and a ReLU's output bounds are its input bounds
  passed through the ReLU;
* convolutional layers reached from the input through convolutions, elementwise-affine layers
  and ReLUs get their intermediate bounds on receptive-field patches (``conv_mode="patches"``,
  :mod:`advtrain.certify.patches`), other layers on full feature maps in chunks of neurons
  (``conv_mode="matrix"``); both give the same numbers.

Differences: the max-pool relaxation also handles overlapping windows and pads with ``-inf``; for
CROWN-IBP with ``l2`` the intermediate IBP bounds are intersected with the input box (see
:func:`advtrain.certify.interval_bounds`), which auto_LiRPA's IBP does not do; and the L2 radius
of a convolution on the input is computed with its zero padding (``eps·||W_i ⊙ s||₂`` over the
taps inside the image), where auto_LiRPA 0.3 uses the whole kernel's norm at every position (its
``BoundConv.interval_propagate`` marks this ``TODO: padding``), so for a padded first convolution
followed by a ReLU its L2 CROWN bounds are looser than these (still sound).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from advtrain.certify.graph import BoundGraph
from advtrain.certify.ibp import fold_target, ibp_pass, prepare, propagate, spec_interval
from advtrain.certify.ops import (
    RELU_LOWER,
    AffineOp,
    Interval,
    MonotoneOp,
    ReshapeOp,
    RunContext,
    box_to_interval,
)
from advtrain.certify.patches import patch_bounds, patch_chain
from advtrain.certify.precision import without_autocast
from advtrain.certify.spec import InputSet, check_arguments, margin_spec

INTERMEDIATE: tuple[str, ...] = ("crown", "ibp")
CONV_MODES: tuple[str, ...] = ("patches", "matrix")
#: Default number of numbers in one batch of backward coefficients (2**22: 16 MiB in float32).
DEFAULT_CHUNK_ELEMENTS = 2**22


def _add(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    """Sum of two optional coefficient tensors (``None`` is zero)."""
    if a is None:
        return b
    if b is None:
        return a
    return a + b


def _accumulate(old: tuple[Any, Any], new: tuple[Any, Any]) -> tuple[Any, Any]:
    """Adds the pair ``new`` to ``old``, keeping a shared lower/upper tensor shared."""
    lo = _add(old[0], new[0])
    if old[0] is old[1] and new[0] is new[1]:
        return lo, lo
    return lo, _add(old[1], new[1])


def backward(
    graph: BoundGraph,
    start: int,
    lA: Tensor | None,
    uA: Tensor | None,
    bounds: dict[int, Interval],
    ctx: RunContext,
) -> tuple[Tensor | None, Tensor | None, Tensor | float, Tensor | float]:
    """Propagates ``lA·z_start`` / ``uA·z_start`` back to linear functions of the input.

    Args:
        graph: The bound graph.
        start: Node whose output the coefficients multiply.
        lA: Coefficients ``(B_A, S, *shape)`` of the lower bound (or ``None``).
        uA: Coefficients of the upper bound (may be the same tensor as ``lA``).
        bounds: Pre-activation bounds of every nonlinear layer between the input and ``start``.
        ctx: Run context.

    Returns:
        ``(lA_in, uA_in, lower_bias, upper_bias)``: ``lA_in·x' + lower_bias <= lA·z_start`` and
        ``uA·z_start <= uA_in·x' + upper_bias`` for every ``x'`` in the input set.
    """
    pending: dict[int, tuple[Any, Any]] = {start: (lA, uA)}
    lbias: Tensor | float = 0.0
    ubias: Tensor | float = 0.0
    for k in range(start, 0, -1):
        if k not in pending:
            continue
        cur_l, cur_u = pending.pop(k)
        node = graph.nodes[k]
        in_bounds = [bounds.get(j) for j in node.inputs]
        if node.op.needs_input_bounds and any(b is None for b in in_bounds):
            raise RuntimeError(f"internal error: no input bounds for {node.op.name}")
        outs, lb, ub = node.op.backward(ctx, cur_l, cur_u, in_bounds)
        lbias = lbias + lb
        ubias = ubias + ub
        for j, pair in zip(node.inputs, outs, strict=True):
            pending[j] = _accumulate(pending[j], pair) if j in pending else pair
    in_l, in_u = pending.get(0, (None, None))
    return in_l, in_u, lbias, ubias


def concretize(
    A: Tensor | None, bias: Tensor | float, inputs: InputSet, sign: int, batch: int
) -> Tensor:
    """``min`` (``sign = -1``) or ``max`` (``+1``) of ``A·x' + bias`` over the input set."""
    x = inputs.x
    if A is None:
        out = torch.zeros((batch, 1), dtype=x.dtype, device=x.device) + bias
        return out
    flat = A.reshape(A.shape[0], A.shape[1], -1)
    if inputs.norm == "linf":
        lo, hi = inputs.box(clip=True)
        center = ((hi + lo) / 2).reshape(batch, -1, 1)
        diff = ((hi - lo) / 2).reshape(batch, -1, 1)
        out = flat.matmul(center).squeeze(-1) + sign * flat.abs().matmul(diff).squeeze(-1)
    else:
        center = x.reshape(batch, -1, 1)
        out = flat.matmul(center).squeeze(-1) + sign * inputs.eps * flat.norm(dim=-1)
    return out + bias


def _exact_nodes(graph: BoundGraph) -> set[int]:
    """Nodes reached from the input through affine layers with at most one mixing layer."""
    count: dict[int, int] = {0: 0}
    for i in range(1, len(graph.nodes)):
        node = graph.nodes[i]
        if not isinstance(node.op, AffineOp) or len(node.inputs) != 1:
            continue
        prev = count.get(node.inputs[0])
        if prev is None:
            continue
        c = prev + (1 if node.op.mixing else 0)
        if c <= 1:
            count[i] = c
    return set(count)


def _cone_max_numel(graph: BoundGraph, start: int) -> int:
    """Largest per-example size of a node that a backward pass from ``start`` goes through."""
    seen = {start}
    best = 1
    for k in range(start, -1, -1):
        if k not in seen:
            continue
        best = max(best, math.prod(graph.nodes[k].shape))
        seen.update(graph.nodes[k].inputs)
    return best


def _node_bounds(
    graph: BoundGraph,
    k: int,
    bounds: dict[int, Interval],
    inputs: InputSet,
    ctx: RunContext,
    chunk: int | None,
) -> Interval:
    """CROWN bounds of every neuron of node ``k``, in chunks of identity specs."""
    shape = graph.nodes[k].shape
    n = math.prod(shape)
    x = inputs.x
    batch = x.shape[0]
    if chunk is None:
        chunk = max(1, DEFAULT_CHUNK_ELEMENTS // (batch * _cone_max_numel(graph, k)))
    lows, ups = [], []
    for i0 in range(0, n, chunk):
        s = min(chunk, n - i0)
        eye = torch.zeros((1, s, n), dtype=x.dtype, device=x.device)
        eye[0, torch.arange(s, device=x.device), torch.arange(i0, i0 + s, device=x.device)] = 1
        eye = eye.view(1, s, *shape)
        in_l, in_u, lb, ub = backward(graph, k, eye, eye, bounds, ctx)
        lows.append(concretize(in_l, lb, inputs, -1, batch).expand(batch, s))
        ups.append(concretize(in_u, ub, inputs, +1, batch).expand(batch, s))
    lower = torch.cat(lows, dim=1).view(batch, *shape)
    upper = torch.cat(ups, dim=1).view(batch, *shape)
    return lower, upper


def _needed(graph: BoundGraph) -> list[int]:
    """Nodes whose bounds a nonlinear layer needs, in topological order."""
    return sorted({j for node in graph.nodes if node.op.needs_input_bounds for j in node.inputs})


def intermediate_bounds(
    graph: BoundGraph,
    inputs: InputSet,
    ctx: RunContext,
    method: str,
    chunk: int | None = None,
    conv_mode: str = "patches",
) -> dict[int, Interval]:
    """Bounds of every node whose consumer is nonlinear, by CROWN or by IBP.

    With ``conv_mode="patches"`` the CROWN bounds of convolutional layers reached from the input
    through a chain of convolutions, elementwise-affine layers and ReLUs are computed on
    receptive-field patches (:mod:`advtrain.certify.patches`), with the same result.
    """
    need = _needed(graph)
    if not need:
        return {}
    if method == "ibp":
        return ibp_pass(graph, inputs, ctx, keep=set(need), stop=max(need))
    exact = _exact_nodes(graph)
    exact_need = [k for k in need if k in exact]
    bounds: dict[int, Interval] = {}
    if exact_need:
        bounds.update(
            ibp_pass(
                graph,
                inputs,
                ctx,
                keep=set(exact_need),
                stop=max(exact_need),
                only=exact,
                clip_l2=False,
            )
        )
    for k in need:
        if k in bounds:
            continue
        node = graph.nodes[k]
        src = node.inputs[0] if len(node.inputs) == 1 else None
        if src is not None and src in bounds and isinstance(node.op, (MonotoneOp, ReshapeOp)):
            bounds[k] = node.op.interval(ctx, bounds[src])
        else:
            res = None
            chain = patch_chain(graph, k) if conv_mode == "patches" else None
            if chain is not None:
                res = patch_bounds(
                    graph, k, chain, bounds, inputs, ctx, DEFAULT_CHUNK_ELEMENTS, chunk
                )
            bounds[k] = (
                res if res is not None else _node_bounds(graph, k, bounds, inputs, ctx, chunk)
            )
    return bounds


@without_autocast
def compute_crown(
    model: nn.Module,
    inputs: InputSet,
    labels: Tensor | None,
    intermediate: str = "crown",
    relu_lower: str = "adaptive",
    chunk: int | None = None,
    batch_stats: bool = False,
    need_upper: bool = True,
    conv_mode: str = "patches",
) -> tuple[Tensor, Tensor | None]:
    """CROWN on checked arguments (see :func:`crown_bounds`); ``batch_stats`` handles BatchNorm
    in training mode with the clean batch's statistics and ``need_upper=False`` skips the upper
    bound of the final layer (training losses need only the lower margins)."""
    ctx = RunContext(batch_stats=batch_stats, relu_lower=relu_lower)
    graph, k = prepare(model, inputs, labels, ctx)
    bounds = intermediate_bounds(graph, inputs, ctx, intermediate, chunk, conv_mode)
    return _final(graph, inputs, ctx, labels, k, bounds, need_upper)


def _output_spec(labels: Tensor | None, k: int, x: Tensor) -> Tensor:
    """The spec matrix of the final pass: the identity on the logits, or the margins."""
    if labels is None:
        return torch.eye(k, dtype=x.dtype, device=x.device).unsqueeze(0)
    return margin_spec(labels, k, x.dtype)


def _final(
    graph: BoundGraph,
    inputs: InputSet,
    ctx: RunContext,
    labels: Tensor | None,
    k: int,
    bounds: dict[int, Interval],
    need_upper: bool,
) -> tuple[Tensor, Tensor | None]:
    """The backward pass from the output with the spec matrix, concretised."""
    x = inputs.x
    C = _output_spec(labels, k, x)
    batch = x.shape[0]
    in_l, in_u, lb, ub = backward(graph, graph.output, C, C if need_upper else None, bounds, ctx)
    lower = concretize(in_l, lb, inputs, -1, batch).expand(batch, k)
    upper = concretize(in_u, ub, inputs, +1, batch).expand(batch, k) if need_upper else None
    return lower, upper


@without_autocast
def compute_crown_ibp(
    model: nn.Module, inputs: InputSet, labels: Tensor, batch_stats: bool = False
) -> tuple[Tensor, Tensor]:
    """Lower margin bounds by CROWN-IBP and by IBP from one shared IBP pass.

    Returns:
        ``(crown_ibp_lower, ibp_lower)``, each ``(B, K)``.
    """
    ctx = RunContext(batch_stats=batch_stats)
    graph, k = prepare(model, inputs, labels, ctx)
    need = _needed(graph)
    j = fold_target(graph)
    keep = set(need) | {graph.output if j is None else j}
    pre = propagate(graph, inputs, ctx, keep=keep, stop=max(keep))
    ibp_lower, _ = spec_interval(graph, inputs, ctx, margin_spec(labels, k, inputs.x.dtype), pre)
    bounds = {i: box_to_interval(pre[0][i]) for i in need}
    crown_lower, _ = _final(graph, inputs, ctx, labels, k, bounds, need_upper=False)
    return crown_lower, ibp_lower


def crown_bounds(
    model: nn.Module,
    x: Tensor,
    eps: float,
    norm: str = "linf",
    bounds: Sequence[float] = (0.0, 1.0),
    labels: Tensor | None = None,
    intermediate: str = "crown",
    *,
    relu_lower: str = "adaptive",
    chunk_size: int | None = None,
    conv_mode: str = "patches",
) -> tuple[Tensor, Tensor]:
    """CROWN (Zhang et al. 2018) or CROWN-IBP (Zhang et al. 2020) bounds on logits or margins.

    Every output (or margin ``z_y - z_j`` with ``labels``) is bounded by a linear function of the
    input obtained by a backward pass through the network, all outputs at once (a spec matrix
    ``C`` of shape ``(B, K, K)``), and minimised/maximised over the input set in closed form.
    Matches auto_LiRPA's ``method="CROWN"`` (``intermediate="crown"``) and ``"CROWN-IBP"``
    (``intermediate="ibp"``); see the module docstring for the conventions (input box for
    ``linf``, dual norm for ``l2``).

    Intermediate bounds by CROWN need one backward pass per neuron of every layer that feeds a
    ReLU; they are batched in chunks of ``chunk_size`` neurons (by default sized so that one batch
    of coefficients holds at most 2**22 numbers), so convolutional networks fit in memory, and
    convolutional layers use receptive-field patches where possible (``conv_mode``). CROWN-IBP
    needs a single backward pass.

    Supported layers: those of :func:`advtrain.certify.interval_bounds` except the smooth
    activations (Sigmoid, Tanh, ELU, ...), which raise ``NotImplementedError`` naming the layer;
    ReLU and LeakyReLU (slope in ``[0, 1]``) are relaxed, max-pooling is relaxed as in
    auto_LiRPA (also for overlapping windows), residual blocks are supported.

    Args:
        model: A classifier returning logits ``(B, K)``.
        x: Inputs ``(B, ...)`` inside ``bounds``.
        eps: Radius of the ball, in input units (``>= 0``).
        norm: ``"linf"`` or ``"l2"``.
        bounds: The input box ``(low, high)``.
        labels: Optional labels ``(B,)``: bound the margins ``z_y - z_j`` (column ``y`` is 0).
        intermediate: ``"crown"`` (full CROWN) or ``"ibp"`` (CROWN-IBP).
        relu_lower: Lower slope of unstable ReLUs: ``"adaptive"`` (CROWN's default: 1 if
            ``u > -l`` else 0), ``"zero"`` or ``"one"`` (auto_LiRPA's ``zero-lb``/``one-lb``).
        chunk_size: Neurons per backward pass for intermediate bounds (``None``: automatic).
        conv_mode: ``"patches"`` (default) computes intermediate bounds of convolutional
            layers on receptive-field patches when the layers between them and the input are
            convolutions, elementwise-affine layers and ReLUs (auto_LiRPA's default mode; much
            cheaper); ``"matrix"`` always uses full feature maps. Both give the same bounds.

    Returns:
        ``(lower, upper)``, each ``(B, K)``.

    Raises:
        TypeError: For a layer bound propagation does not support at all (named).
        NotImplementedError: For a layer IBP supports but CROWN does not (named).
        ValueError: For bad arguments or BatchNorm/Dropout in training mode.
    """
    inputs = check_arguments(model, x, eps, norm, bounds)
    if intermediate not in INTERMEDIATE:
        raise ValueError(
            f"intermediate must be one of {list(INTERMEDIATE)} ('crown': full CROWN, 'ibp': "
            f"CROWN-IBP), got {intermediate!r}"
        )
    if relu_lower not in RELU_LOWER:
        raise ValueError(f"relu_lower must be one of {list(RELU_LOWER)}, got {relu_lower!r}")
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
    ):
        raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size!r}")
    if conv_mode not in CONV_MODES:
        raise ValueError(f"conv_mode must be one of {list(CONV_MODES)}, got {conv_mode!r}")
    lower, upper = compute_crown(
        model, inputs, labels, intermediate, relu_lower, chunk_size, conv_mode=conv_mode
    )
    assert upper is not None
    return lower, upper


__all__ = [
    "INTERMEDIATE",
    "backward",
    "compute_crown",
    "compute_crown_ibp",
    "concretize",
    "crown_bounds",
    "intermediate_bounds",
]
