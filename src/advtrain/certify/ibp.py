"""Interval bound propagation (IBP): a box around every activation, layer by layer.

Reference:
    Gowal, Dvijotham, Stanforth, Bunel, Qin, Uesato, Arandjelovic, Mann & Kohli, "On the
    Effectiveness of Interval Bound Propagation for Training Verifiably Robust Models",
    arXiv:1810.12715, 2018. An affine layer maps the box with centre ``c`` and radius ``r`` to the
    box with centre ``W·c + b`` and radius ``|W|·r``; a monotone activation maps ``[l, u]`` to
    ``[σ(l), σ(u)]``. Bounds on the margins ``z_y - z_j`` fold the spec matrix into the last
    linear layer (``W ← C·W``), which is tighter than bounding the logits first (Gowal et al.,
    Eq. 6).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advtrain.certify.graph import BoundGraph
from advtrain.certify.lowering import build_graph
from advtrain.certify.ops import (
    AddOp,
    BatchNormOp,
    Box,
    ConvOp,
    DenseOp,
    Interval,
    ReshapeOp,
    RunContext,
    ScaleOp,
    box_to_interval,
    conv_padding,
    interval_to_box,
)
from advtrain.certify.precision import without_autocast
from advtrain.certify.spec import InputSet, check_arguments, check_output, margin_spec

#: The L2 ball seen through an elementwise-affine prefix of the network: ``c + s ⊙ δ``,
#: ``||δ||₂ <= eps`` (``s`` has a batch dimension of 1).
L2View = tuple[Tensor, Tensor]
#: What :func:`propagate` returns: boxes ``{node: (mu, w)}`` and L2 views ``{node: (c, s)}``.
Propagated = tuple[dict[int, Box], dict[int, L2View]]


def _l2_radius(op: DenseOp | ConvOp, s: Tensor, eps: float, W: Tensor | None = None) -> Tensor:
    """``eps · ||row_i(M) ⊙ s||₂`` for every output ``i`` of the layer ``M``."""
    if isinstance(op, DenseOp):
        weight = op.module.weight if W is None else W
        sq = s.pow(2)
        if weight.dim() == 3:  # folded spec: (B, S, in)
            return eps * weight.pow(2).matmul(sq.reshape(sq.shape[0], -1, 1)).squeeze(-1).sqrt()
        return eps * F.linear(sq, weight.pow(2)).sqrt()
    m = op.module
    out = F.conv2d(
        s.pow(2),
        m.weight.pow(2),
        None,
        stride=m.stride,
        padding=conv_padding(m),
        dilation=m.dilation,
        groups=m.groups,
    )
    return eps * out.sqrt()


def ibp_pass(
    graph: BoundGraph,
    inputs: InputSet,
    ctx: RunContext,
    keep: set[int] | None = None,
    stop: int | None = None,
    only: set[int] | None = None,
    clip_l2: bool = True,
) -> dict[int, Interval]:
    """Interval bounds ``(lower, upper)`` of the nodes ``keep`` (see :func:`propagate`)."""
    boxes = propagate(graph, inputs, ctx, keep, stop, only, clip_l2)[0]
    return {i: box_to_interval(b) for i, b in boxes.items()}


#: Producers whose boxes are fresh tensors that autograd does not save (their only consumer may
#: overwrite them).
_FRESH = (DenseOp, ConvOp, BatchNormOp, AddOp)


def propagate(
    graph: BoundGraph,
    inputs: InputSet,
    ctx: RunContext,
    keep: set[int] | None = None,
    stop: int | None = None,
    only: set[int] | None = None,
    clip_l2: bool = True,
) -> Propagated:
    """Propagates the input set's box through ``graph`` in centre/width form.

    Every node's box is held as ``(mu, w)`` (centre and width, :data:`~advtrain.certify.ops.Box`):
    an affine layer maps it with one product by ``M`` and one by ``|M|`` (Gowal et al. 2018,
    Eq. 4-5) and a ReLU takes four elementwise passes, in place when it is the only reader of a
    fresh box (:meth:`~advtrain.certify.ops.ReLUOp.box`); endpoints are only formed where they
    are asked for.

    For ``l2`` the box ``[x - eps, x + eps] ∩ [low, high]`` is propagated, and at the first
    linear or convolution layer (after any elementwise-affine layers such as ``Normalize``) the
    box of each output is intersected with the exact interval ``c_i ± eps·||row_i||₂`` of the
    ball (the dual-norm bound of Gowal et al. / auto_LiRPA).

    Args:
        graph: The bound graph.
        inputs: The input set.
        ctx: Run context (BatchNorm statistics).
        keep: Node indices whose boxes are returned (default: only the output).
        stop: Propagate up to this node index (inclusive; default: the whole graph).
        only: Evaluate only these nodes (their inputs must be among them or the input).
        clip_l2: For ``l2``, intersect with the input box (``False``: the plain ball, as in
            auto_LiRPA).

    Returns:
        ``{node index: (mu, w)}`` for ``keep`` (and ``stop``/the output), and the exact
        description ``(c, s)`` of the L2 ball at those of them still in the elementwise prefix.
    """
    n_nodes = len(graph.nodes)
    last = n_nodes - 1 if stop is None else stop
    want = set(keep or ()) | {last if stop is not None else graph.output}
    boxes: list[Box | None] = [None] * n_nodes
    aff: list[L2View | None] = [None] * n_nodes
    boxes[0], aff[0] = _input_box(inputs, clip_l2)
    for i in range(1, last + 1):
        if only is not None and i not in only:
            continue
        boxes[i], aff[i] = _node_box(graph, i, boxes, aff, inputs, ctx, want)
        for j in graph.nodes[i].inputs:
            if graph.last_use[j] <= i and j not in want:
                boxes[j] = None
                aff[j] = None
    out = {i: box for i in want if (box := boxes[i]) is not None}
    return out, {i: view for i in want if (view := aff[i]) is not None}


def _input_box(inputs: InputSet, clip_l2: bool) -> tuple[Box, L2View | None]:
    """The input set's box and, for ``l2``, the exact ball ``x + 1 ⊙ δ``.

    The box is clipped to the input box, except for ``l2`` without ``clip_l2``.
    """
    l2 = inputs.norm == "l2"
    lo, hi = inputs.box(clip=not l2 or clip_l2)
    width = hi - lo
    box = (hi.add_(lo).mul_(0.5), width)
    if not l2:
        return box, None
    x = inputs.x
    return box, (x, torch.ones((1, *x.shape[1:]), dtype=x.dtype, device=x.device))


def _node_box(
    graph: BoundGraph,
    i: int,
    boxes: list[Box | None],
    aff: list[L2View | None],
    inputs: InputSet,
    ctx: RunContext,
    want: set[int],
) -> tuple[Box, L2View | None]:
    """The box of node ``i`` from its inputs' boxes, and its L2 view while there is one.

    Raises:
        RuntimeError: If an input's box was not computed (an ``only`` set that misses it).
    """
    node = graph.nodes[i]
    op = node.op
    ins = [boxes[j] for j in node.inputs]
    if any(v is None for v in ins):
        raise RuntimeError(f"internal error: missing box for an input of {op.name}")
    tracked = aff[node.inputs[0]] if len(node.inputs) == 1 else None
    if tracked is not None and isinstance(op, (ScaleOp, ReshapeOp)):
        c, s = tracked
        view = (op.apply(ctx, c), op.apply_abs(ctx, s))
        return op.box(ctx, *ins), view  # type: ignore[arg-type]
    if tracked is not None and isinstance(op, (DenseOp, ConvOp)):
        c, s = tracked
        center = op.apply(ctx, c)
        radius = _l2_radius(op, s, inputs.eps)
        lo, hi = box_to_interval(op.box(ctx, *ins))  # type: ignore[arg-type]
        lo, hi = torch.maximum(lo, center - radius), torch.minimum(hi, center + radius)
        return interval_to_box((lo, hi)), None
    j = node.inputs[0]
    # The only reader of a fresh box that is not returned may overwrite it.
    owned = (
        len(node.inputs) == 1
        and j != 0
        and j not in want
        and graph.consumers[j] == 1
        and isinstance(graph.nodes[j].op, _FRESH)
    )
    return op.box(ctx, *ins, owned=owned), None  # type: ignore[arg-type]


def fold_target(graph: BoundGraph) -> int | None:
    """The input node of the final linear layer into which a spec can be folded, if any."""
    out = graph.nodes[graph.output]
    if isinstance(out.op, DenseOp) and len(graph.nodes[out.inputs[0]].shape) == 1:
        return out.inputs[0]
    return None


def spec_interval(
    graph: BoundGraph,
    inputs: InputSet,
    ctx: RunContext,
    C: Tensor,
    pre: Propagated | None = None,
) -> Interval:
    """IBP bounds on ``C·z`` with ``C`` folded into the final linear layer when there is one.

    Args:
        graph: The bound graph.
        inputs: The input set.
        ctx: Run context.
        C: Spec matrix ``(B, S, K)``.
        pre: Boxes (and L2 descriptions) already propagated by :func:`propagate`; must hold
            :func:`fold_target` (or the output when there is none).
    """
    op = graph.nodes[graph.output].op
    j = fold_target(graph)
    if j is not None:
        assert isinstance(op, DenseOp)
        boxes, affs = pre if pre is not None else propagate(graph, inputs, ctx, stop=j)
        mu, w = boxes[j]
        W, b = op.folded(C)  # (B, S, in), (B, S)
        c = W.matmul(mu.unsqueeze(-1)).squeeze(-1)
        if b is not None:
            c = c + b
        r = W.abs().matmul(w.unsqueeze(-1)).squeeze(-1).mul_(0.5)
        lower, upper = c - r, c + r
        if j in affs:  # L2 ball still exact here: intersect with the dual-norm interval of C·W
            cx, sx = affs[j]
            cc = W.matmul(cx.unsqueeze(-1)).squeeze(-1)
            if b is not None:
                cc = cc + b
            rad = _l2_radius(op, sx, inputs.eps, W)
            lower, upper = torch.maximum(lower, cc - rad), torch.minimum(upper, cc + rad)
        return lower, upper
    boxes = pre[0] if pre is not None else propagate(graph, inputs, ctx)[0]
    mu, w = boxes[graph.output]
    c = C.matmul(mu.unsqueeze(-1)).squeeze(-1)
    r = C.abs().matmul(w.unsqueeze(-1)).squeeze(-1).mul_(0.5)
    return c - r, c + r


def prepare(
    model: nn.Module, inputs: InputSet, labels: Tensor | None, ctx: RunContext
) -> tuple[BoundGraph, int]:
    """Builds (or fetches) the graph, checks the output and modes, records batch statistics.

    Returns:
        The graph and the number of classes.
    """
    x = inputs.x
    graph = build_graph(model, x)
    k = check_output(graph.nodes[graph.output].shape, x.shape[0], labels)
    graph.check_modes(ctx)
    if ctx.batch_stats and any(
        isinstance(n.op, BatchNormOp) and n.op.uses_batch_stats() for n in graph.nodes
    ):
        graph.forward(x, ctx)
    return graph, k


@without_autocast
def compute_ibp(
    model: nn.Module,
    inputs: InputSet,
    labels: Tensor | None,
    batch_stats: bool = False,
) -> Interval:
    """IBP on checked arguments; ``batch_stats`` bounds BatchNorm in training mode with the clean
    batch's statistics and Dropout in training mode as the identity (the training losses)."""
    ctx = RunContext(batch_stats=batch_stats)
    graph, k = prepare(model, inputs, labels, ctx)
    if labels is None:
        return box_to_interval(propagate(graph, inputs, ctx)[0][graph.output])
    return spec_interval(graph, inputs, ctx, margin_spec(labels, k, inputs.x.dtype))


def interval_bounds(
    model: nn.Module,
    x: Tensor,
    eps: float,
    norm: str = "linf",
    bounds: Sequence[float] = (0.0, 1.0),
    labels: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Interval bounds (IBP, Gowal et al. 2018) on the logits or margins of ``model``.

    The input set is the Lp ball of radius ``eps`` around each input intersected with the box
    ``bounds``: for ``linf`` the box ``[max(x - eps, low), min(x + eps, high)]`` is propagated; for
    ``l2`` the box ``[x - eps, x + eps] ∩ bounds`` (which contains the ball ∩ box) is propagated
    and, at the first linear/convolution layer (after elementwise layers such as ``Normalize``
    or eval-mode BatchNorm), intersected with the exact interval ``W_i·x + b_i ± eps·||W_i||₂``
    of the ball. Both are valid, so the intersection is too; it is never looser than the
    dual-norm bound alone (auto_LiRPA's IBP for L2).

    Supported layers: ``Linear``, ``Conv2d`` (zero padding), ReLU and other non-decreasing
    activations (LeakyReLU, Sigmoid, Tanh, ELU, ReLU6, Hardtanh, Softplus, Hardsigmoid),
    ``BatchNorm1d/2d`` in eval mode (folded exactly), ``Flatten``/``view``, ``AvgPool2d``,
    ``AdaptiveAvgPool2d``, ``MaxPool2d``, ``Dropout`` (eval), ``Identity``,
    :class:`advtrain.models.Normalize`, nested ``nn.Sequential`` and residual blocks written as
    ``torch.fx``-traceable modules (e.g. :class:`advtrain.models.PreActResNet18`,
    :class:`advtrain.models.WideResNet`). The model is never called and its state is untouched;
    the bounds carry gradients to its parameters (for certified training).

    Args:
        model: A classifier returning logits ``(B, K)``.
        x: Inputs ``(B, ...)`` inside ``bounds``.
        eps: Radius of the ball, in input units (``>= 0``).
        norm: ``"linf"`` or ``"l2"``.
        bounds: The input box ``(low, high)``.
        labels: Optional labels ``(B,)``. If given, the bounds are on the margins
            ``z_y - z_j`` for every class ``j`` (spec rows ``e_y - e_j``, folded into the last
            linear layer; the column ``j = y`` is 0). An example is verified when the lower
            bounds of all other columns are positive.

    Returns:
        ``(lower, upper)``, each ``(B, K)``.

    Raises:
        TypeError: For an unsupported layer (named in the message) or an untraceable model.
        ValueError: For bad arguments (negative ``eps``, unknown norm, ``x`` outside ``bounds``),
            BatchNorm or Dropout in training mode (call ``model.eval()``).

    Example:
        >>> model = SmallCNN().eval()  # doctest: +SKIP
        >>> lower, upper = interval_bounds(model, x, eps=0.1, labels=y)  # doctest: +SKIP
        >>> verified = (lower.scatter(1, y[:, None], 1.0) > 0).all(dim=1)  # doctest: +SKIP
    """
    inputs = check_arguments(model, x, eps, norm, bounds)
    return compute_ibp(model, inputs, labels)


def verified(lower_margins: Tensor, labels: Tensor) -> Tensor:
    """Per example: every margin lower bound ``z_y - z_j`` (``j ≠ y``) is positive."""
    masked = lower_margins.scatter(1, labels.unsqueeze(1), float("inf"))
    return (masked > 0).all(dim=1)


__all__ = [
    "L2View",
    "Propagated",
    "compute_ibp",
    "fold_target",
    "ibp_pass",
    "interval_bounds",
    "prepare",
    "propagate",
    "spec_interval",
    "verified",
]
