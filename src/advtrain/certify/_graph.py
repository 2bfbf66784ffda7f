"""Turn a PyTorch model into a graph of bound operators (via ``torch.fx``).

The model is traced symbolically once (``torch.fx``, with advtrain's :class:`Normalize` and every
``torch.nn`` layer kept as a leaf), then *lowered* on a concrete batch: each traced operation whose
value depends on the input becomes a node holding a :mod:`~advtrain.certify._ops` operator, and
everything else (shapes, constants) is evaluated once. ``nn.Sequential`` nesting, residual blocks
written as ordinary ``forward`` methods (``out + shortcut``), ``torch.flatten``/``view`` and the
functional forms of the supported layers are all handled; anything else raises an error that names
the layer.

Lowered graphs are cached per model (weakly) and per input shape, dtype and device, and are
rebuilt when the model's set of submodules changes. Operators read parameters, buffers and
training flags from the live modules at every call, so training updates are always seen.
"""

from __future__ import annotations

import operator
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.dropout import _DropoutNd

from advtrain.certify._ops import (
    AddOp,
    AvgPoolOp,
    BatchNormOp,
    BoundOp,
    ConvOp,
    DenseOp,
    InputOp,
    MaxPoolOp,
    MonotoneOp,
    NormalizeOp,
    ReLUOp,
    ReshapeOp,
    RunContext,
    ScaleOp,
)
from advtrain.models.normalize import Normalize

#: Elementwise non-decreasing activations supported by IBP (CROWN: ReLU and LeakyReLU only).
_MONOTONE_MODULES: dict[type, Callable[[nn.Module], Callable[[Tensor], Tensor]]] = {
    nn.Sigmoid: lambda m: torch.sigmoid,
    nn.Tanh: lambda m: torch.tanh,
    nn.ReLU6: lambda m: F.relu6,
    nn.Hardtanh: lambda m: lambda t: F.hardtanh(t, m.min_val, m.max_val),
    nn.ELU: lambda m: lambda t: F.elu(t, m.alpha),
    nn.Softplus: lambda m: lambda t: F.softplus(t, m.beta, m.threshold),
    nn.Hardsigmoid: lambda m: F.hardsigmoid,
}

SUPPORTED_LAYERS: tuple[str, ...] = (
    "Linear",
    "Conv2d",
    "ReLU",
    "LeakyReLU",
    "Sigmoid",
    "Tanh",
    "ReLU6",
    "Hardtanh",
    "ELU",
    "Softplus",
    "Hardsigmoid",
    "BatchNorm1d",
    "BatchNorm2d",
    "Flatten",
    "AvgPool2d",
    "AdaptiveAvgPool2d",
    "MaxPool2d",
    "Dropout",
    "Identity",
    "advtrain.models.Normalize",
    "nn.Sequential",
    "residual additions (x + f(x))",
)


@dataclass
class Node:
    """One perturbed value of the graph: ``op`` applied to the nodes ``inputs``."""

    op: BoundOp
    inputs: tuple[int, ...]
    shape: tuple[int, ...]


@dataclass
class BoundGraph:
    """A model lowered to bound operators, in topological order (node 0 is the input).

    Attributes:
        nodes: The nodes; ``nodes[i].inputs`` only refer to earlier nodes.
        output: Index of the output node.
        dropouts: Dropout layers folded away as the identity, checked at every call.
        last_use: For each node, the index of the last node that reads it.
        consumers: For each node, how many nodes read it.
    """

    nodes: list[Node]
    output: int
    dropouts: list[tuple[str, nn.Module]] = field(default_factory=list)
    last_use: list[int] = field(default_factory=list)
    consumers: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        last = list(range(len(self.nodes)))
        count = [0] * len(self.nodes)
        for i, node in enumerate(self.nodes):
            for j in node.inputs:
                last[j] = max(last[j], i)
                count[j] += 1
        last[self.output] = len(self.nodes)
        self.last_use = last
        self.consumers = count

    def check_modes(self, ctx: RunContext) -> None:
        """Raises if a layer's training-mode behaviour would make bounds meaningless.

        Raises:
            ValueError: For dropout in training mode (unless ``ctx.batch_stats``, where it is
                bounded as the identity) and BatchNorm in training mode without batch statistics.
        """
        if not ctx.batch_stats:
            for name, m in self.dropouts:
                if m.training and float(getattr(m, "p", 0.0)) > 0:
                    raise ValueError(
                        f"{name} (Dropout) is in training mode, so the model is random; call "
                        "model.eval() before computing bounds"
                    )
        for node in self.nodes:
            op = node.op
            if isinstance(op, BatchNormOp) and op.uses_batch_stats() and not ctx.batch_stats:
                op.coeffs(ctx)  # raises the explanatory error

    def forward(self, x: Tensor, ctx: RunContext) -> Tensor:
        """The model's output on ``x`` computed by the operators (records BN batch statistics)."""
        values: list[Tensor | None] = [None] * len(self.nodes)
        values[0] = x
        for i in range(1, len(self.nodes)):
            node = self.nodes[i]
            values[i] = node.op.forward(ctx, *[values[j] for j in node.inputs])  # type: ignore[misc]
            for j in node.inputs:
                if self.last_use[j] == i:
                    values[j] = None
        out = values[self.output]
        assert out is not None
        return out


class _Tracer(fx.Tracer):
    """Keeps every ``torch.nn`` layer and advtrain's ``Normalize`` as a leaf."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, Normalize):
            return True
        return super().is_leaf_module(m, module_qualified_name)


class _Perturbed:
    """Marks an fx value that depends on the perturbed input: the node index and its value."""

    __slots__ = ("index", "value")

    def __init__(self, index: int, value: Tensor) -> None:
        self.index = index
        self.value = value


def _is_leaf_type(m: nn.Module) -> bool:
    return isinstance(m, Normalize) or (
        type(m).__module__.startswith("torch.nn") and not isinstance(m, nn.Sequential)
    )


def trace(model: nn.Module) -> fx.Graph:
    """Symbolically traces ``model`` (a leaf layer is traced as a one-layer model).

    Raises:
        TypeError: If the model cannot be traced (data-dependent control flow).
    """
    root = nn.Sequential(model) if _is_leaf_type(model) else model
    try:
        return _Tracer().trace(root)
    except Exception as exc:  # fx raises many exception types
        raise TypeError(
            f"cannot trace {type(model).__name__} for bound propagation ({exc}); models must be "
            "nn.Sequential-like or torch.fx-traceable (no Python control flow on tensor values)"
        ) from exc


def _unsupported(name: str, what: str) -> TypeError:
    return TypeError(
        f"bound propagation does not support {what} at {name!r}; supported layers: "
        f"{', '.join(SUPPORTED_LAYERS)}"
    )


class _Lowerer:
    """Interprets a traced graph on a concrete batch, building the bound graph."""

    def __init__(self, root: nn.Module, x: Tensor) -> None:
        self.root = root
        self.modules = dict(root.named_modules())
        self.nodes: list[Node] = [Node(InputOp("input"), (), tuple(x.shape[1:]))]
        self.nodes[0].op.index = 0
        self.dropouts: list[tuple[str, nn.Module]] = []
        self.ctx = RunContext(batch_stats=True)
        self.has_tensor_constants = False
        self.x = x

    # -- helpers ---------------------------------------------------------------------------------
    def add(self, op: BoundOp, inputs: Sequence[_Perturbed]) -> _Perturbed:
        op.index = len(self.nodes)
        value = op.forward(self.ctx, *[p.value for p in inputs])
        self.nodes.append(Node(op, tuple(p.index for p in inputs), tuple(value.shape[1:])))
        return _Perturbed(op.index, value)

    def const(self, value: Any) -> Any:
        if isinstance(value, Tensor):
            self.has_tensor_constants = True
        return value

    def _coeff(self, c: Any, like: Tensor) -> Tensor:
        t = torch.as_tensor(c, dtype=like.dtype, device=like.device)
        while t.dim() < like.dim():
            t = t.unsqueeze(0)
        if t.dim() > like.dim():
            raise ValueError(f"constant of shape {tuple(t.shape)} does not broadcast to the batch")
        return t

    # -- dispatch --------------------------------------------------------------------------------
    def run(self, graph: fx.Graph) -> BoundGraph:
        env: dict[fx.Node, Any] = {}
        output: Any = None
        seen_input = False
        for node in graph.nodes:
            if node.op == "placeholder":
                if not seen_input:
                    env[node] = _Perturbed(0, self.x)
                    seen_input = True
                elif node.args:
                    env[node] = node.args[0]
                else:
                    raise TypeError(
                        f"the model's forward takes more than one input ({node.target!r}); "
                        "bound propagation needs forward(x)"
                    )
                continue
            if node.op == "get_attr":
                env[node] = self.const(_get_attr(self.root, str(node.target)))
                continue
            if node.op == "output":
                output = fx.node.map_arg(node.args[0], lambda n: env[n])
                break
            args = fx.node.map_arg(node.args, lambda n: env[n])
            kwargs = fx.node.map_arg(node.kwargs, lambda n: env[n])
            perturbed = [a for a in _flat(args, kwargs) if isinstance(a, _Perturbed)]
            if not perturbed:
                env[node] = self.const(self._concrete(node, args, kwargs))
                continue
            if node.op == "call_module":
                env[node] = self.call_module(str(node.target), args, kwargs)
            elif node.op in ("call_function", "call_method"):
                env[node] = self.call_function(node, args, kwargs)
            else:  # pragma: no cover - fx has no other kinds
                raise _unsupported(node.name, node.op)
        if not isinstance(output, _Perturbed):
            raise TypeError(
                "the model must return a single tensor of logits that depends on its input; got "
                f"{type(output).__name__}"
            )
        return BoundGraph(self.nodes, output.index, self.dropouts)

    def _concrete(self, node: fx.Node, args: Any, kwargs: Any) -> Any:
        if node.op == "call_module":
            return self.modules[str(node.target)](*args, **kwargs)
        if node.op == "call_method":
            obj, *rest = args
            return getattr(obj, str(node.target))(*rest, **kwargs)
        return node.target(*args, **kwargs)  # type: ignore[operator]

    def call_module(self, target: str, args: Any, kwargs: Any) -> Any:
        m = self.modules[target]
        name = f"{target} ({type(m).__name__})"
        if len(args) != 1 or kwargs or not isinstance(args[0], _Perturbed):
            raise _unsupported(name, "a layer called with several inputs")
        x: _Perturbed = args[0]
        shape = tuple(x.value.shape[1:])
        if isinstance(m, (nn.Identity, _DropoutNd)):
            if isinstance(m, _DropoutNd):
                self.dropouts.append((name, m))
            return x
        if isinstance(m, nn.Linear):
            return self.add(DenseOp(name, m), [x])
        if isinstance(m, nn.Conv2d):
            return self.add(ConvOp(name, m, shape), [x])
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            if isinstance(m, nn.BatchNorm2d) and len(shape) != 3:
                raise _unsupported(name, f"BatchNorm2d on inputs of shape {shape}")
            return self.add(BatchNormOp(name, m, shape), [x])
        if isinstance(m, _BatchNorm):
            raise _unsupported(name, type(m).__name__)
        if isinstance(m, Normalize):
            return self.add(NormalizeOp(name, m, shape), [x])
        if isinstance(m, nn.Flatten):
            if m.start_dim == 0:
                raise _unsupported(name, "Flatten(start_dim=0), which mixes the batch")
            out = torch.flatten(x.value, m.start_dim, m.end_dim)
            return self.add(ReshapeOp(name, shape, out.shape[1:]), [x])
        if isinstance(m, nn.ReLU):
            return self.add(ReLUOp(name), [x])
        if isinstance(m, nn.LeakyReLU):
            return self._leaky(name, x, m.negative_slope)
        if isinstance(m, nn.AvgPool2d):
            return self.add(
                AvgPoolOp(
                    name,
                    shape,
                    m.kernel_size,
                    m.stride,
                    m.padding,
                    m.ceil_mode,
                    m.count_include_pad,
                    m.divisor_override,
                ),
                [x],
            )
        if isinstance(m, nn.AdaptiveAvgPool2d):
            return self.add(AvgPoolOp(name, shape, None, adaptive_output=m.output_size), [x])
        if isinstance(m, nn.MaxPool2d):
            if m.return_indices:
                raise _unsupported(name, "MaxPool2d(return_indices=True)")
            return self.add(
                MaxPoolOp(name, shape, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode),
                [x],
            )
        for cls, make in _MONOTONE_MODULES.items():
            if type(m) is cls:
                if isinstance(m, nn.ELU) and m.alpha < 0:
                    break
                return self.add(MonotoneOp(name, make(m)), [x])
        raise _unsupported(name, f"the layer type {type(m).__name__}")

    def _leaky(self, name: str, x: _Perturbed, slope: float) -> _Perturbed:
        if slope < 0:
            raise _unsupported(name, f"LeakyReLU with negative slope {slope} (not monotone)")
        if slope <= 1:
            return self.add(ReLUOp(name, slope), [x])
        return self.add(MonotoneOp(name, lambda t: F.leaky_relu(t, slope)), [x])

    def call_function(self, node: fx.Node, args: Any, kwargs: Any) -> Any:
        target = node.target
        is_method = node.op == "call_method"
        tname = target if isinstance(target, str) else getattr(target, "__name__", str(target))
        name = f"{node.name} ({tname})"
        first = args[0] if args else None

        def is_p(v: Any) -> bool:
            return isinstance(v, _Perturbed)

        # Shape queries give constants.
        if (target is getattr and args[1] in ("shape", "ndim", "dtype", "device")) or (
            is_method and target in ("size", "dim")
        ):
            return self._concrete(node, _unwrap(args), _unwrap(kwargs))
        if (
            (is_method and target in ("contiguous", "clone"))
            or (target is F.dropout and not _arg(args, kwargs, 2, "training", True))
            or (target is F.dropout and float(_arg(args, kwargs, 1, "p", 0.5)) == 0)
        ):
            return first
        if target is F.dropout:
            raise _unsupported(
                name,
                "F.dropout with training=True (pass training=self.training"
                " and call model.eval(), or use nn.Dropout)",
            )
        # Additions and subtractions.
        if target in (operator.add, torch.add, operator.iadd) or (is_method and target == "add"):
            a, b = args[0], args[1]
            if kwargs.get("alpha", 1) != 1:
                raise _unsupported(name, "add with alpha")
            if is_p(a) and is_p(b):
                return self.add(AddOp(name), [a, b])
            p, c = (a, b) if is_p(a) else (b, a)
            shift = self._coeff(c, p.value)
            return self.add(ScaleOp(name, lambda ctx, s=shift: (None, s)), [p])
        if target in (operator.sub, torch.sub, operator.isub) or (is_method and target == "sub"):
            a, b = args[0], args[1]
            if is_p(a) and is_p(b):
                return self.add(AddOp(name, -1.0), [a, b])
            if is_p(a):
                shift = -self._coeff(b, a.value)
                return self.add(ScaleOp(name, lambda ctx, s=shift: (None, s)), [a])
            shift = self._coeff(a, b.value)
            neg = -torch.ones_like(shift)
            return self.add(ScaleOp(name, lambda ctx, s=shift, n=neg: (n, s)), [b])
        if target in (operator.neg, torch.neg) or (is_method and target == "neg"):
            neg = self._coeff(-1.0, first.value)
            return self.add(ScaleOp(name, lambda ctx, n=neg: (n, None)), [first])
        if target in (operator.mul, torch.mul, operator.imul) or (is_method and target == "mul"):
            a, b = args[0], args[1]
            if is_p(a) and is_p(b):
                raise _unsupported(name, "the product of two input-dependent tensors")
            p, c = (a, b) if is_p(a) else (b, a)
            return self.add(ScaleOp(name, self._scale_fn(name, c, p.value)), [p])
        if target in (operator.truediv, torch.div, torch.true_divide) or (
            is_method and target in ("div", "true_divide")
        ):
            a, b = args[0], args[1]
            if is_p(b) or kwargs.get("rounding_mode") is not None:
                raise _unsupported(name, "division by an input-dependent tensor")
            inv = 1.0 / torch.as_tensor(b, dtype=a.value.dtype, device=a.value.device)
            return self.add(ScaleOp(name, self._scale_fn(name, inv, a.value)), [a])
        # Activations.
        if target in (F.relu, torch.relu) or (is_method and target == "relu"):
            return self.add(ReLUOp(name), [first])
        if target is F.leaky_relu:
            return self._leaky(name, first, float(_arg(args, kwargs, 1, "negative_slope", 0.01)))
        monotone = {
            torch.sigmoid: torch.sigmoid,
            F.sigmoid: torch.sigmoid,
            torch.tanh: torch.tanh,
            F.tanh: torch.tanh,
        }
        if target in monotone or (is_method and target in ("sigmoid", "tanh")):
            fn = monotone.get(target) or getattr(torch, str(target))  # type: ignore[call-overload]
            return self.add(MonotoneOp(name, fn), [first])
        # Reshapes.
        if target is torch.flatten or (is_method and target in ("flatten", "view", "reshape")):
            out = self._concrete(node, _unwrap(args), _unwrap(kwargs))
            if out.dim() == 0 or out.shape[0] != first.value.shape[0]:
                raise _unsupported(name, "a reshape that changes the batch dimension")
            return self.add(ReshapeOp(name, first.value.shape[1:], out.shape[1:]), [first])
        # Pooling.
        if target is F.avg_pool2d:
            names = (
                "kernel_size",
                "stride",
                "padding",
                "ceil_mode",
                "count_include_pad",
                "divisor_override",
            )
            defaults: tuple[Any, ...] = (None, None, 0, False, True, None)
            vals = [
                _arg(args, kwargs, i + 1, n, d)
                for i, (n, d) in enumerate(zip(names, defaults, strict=True))
            ]
            return self.add(AvgPoolOp(name, first.value.shape[1:], *vals), [first])
        if target is F.adaptive_avg_pool2d:
            size = _arg(args, kwargs, 1, "output_size", None)
            return self.add(
                AvgPoolOp(name, first.value.shape[1:], None, adaptive_output=size), [first]
            )
        if target in (F.max_pool2d, torch.max_pool2d):
            names = ("kernel_size", "stride", "padding", "dilation", "ceil_mode")
            defaults = (None, None, 0, 1, False)
            vals = [
                _arg(args, kwargs, i + 1, n, d)
                for i, (n, d) in enumerate(zip(names, defaults, strict=True))
            ]
            if _arg(args, kwargs, 6, "return_indices", False):
                raise _unsupported(name, "max_pool2d(return_indices=True)")
            return self.add(MaxPoolOp(name, first.value.shape[1:], *vals), [first])
        raise _unsupported(name, f"the operation {tname}")

    def _scale_fn(
        self, name: str, c: Any, like: Tensor
    ) -> Callable[[RunContext], tuple[Tensor | None, Tensor | None]]:
        a = self._coeff(c, like)
        if a.dim() > 0 and a.shape[0] > 1:
            raise _unsupported(name, "multiplication by a tensor that varies over the batch")
        return lambda ctx: (a, None)


def _get_attr(root: nn.Module, target: str) -> Any:
    obj: Any = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _arg(args: Sequence[Any], kwargs: dict[str, Any], pos: int, name: str, default: Any) -> Any:
    if len(args) > pos:
        return args[pos]
    return kwargs.get(name, default)


def _flat(args: Any, kwargs: Any) -> list[Any]:
    out: list[Any] = []

    def visit(v: Any) -> None:
        if isinstance(v, (list, tuple)):
            for item in v:
                visit(item)
        elif isinstance(v, dict):
            for item in v.values():
                visit(item)
        else:
            out.append(v)

    visit(args)
    visit(kwargs)
    return out


def _unwrap(v: Any) -> Any:
    if isinstance(v, _Perturbed):
        return v.value
    if isinstance(v, (list, tuple)):
        return type(v)(_unwrap(i) for i in v)
    if isinstance(v, dict):
        return {k: _unwrap(i) for k, i in v.items()}
    return v


# ------------------------------------------------------------------------------------------------
# Cache
# ------------------------------------------------------------------------------------------------
_TRACES: weakref.WeakKeyDictionary[nn.Module, tuple[Any, fx.Graph]] = weakref.WeakKeyDictionary()
_GRAPHS: weakref.WeakKeyDictionary[nn.Module, dict[Any, BoundGraph]] = weakref.WeakKeyDictionary()
_MAX_GRAPHS_PER_MODEL = 8


def _signature(model: nn.Module) -> tuple[Any, ...]:
    return tuple((name, id(m), type(m)) for name, m in model.named_modules())


def build_graph(model: nn.Module, x: Tensor) -> BoundGraph:
    """The bound graph of ``model`` for inputs shaped like ``x`` (cached).

    Raises:
        TypeError: If the model cannot be traced or holds an unsupported layer (named).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    sig = _signature(model)
    key = (sig, tuple(x.shape), x.dtype, x.device)
    cached = _GRAPHS.get(model)
    if cached is not None and key in cached:
        return cached[key]
    leaf_root = _is_leaf_type(model)
    traced = _TRACES.get(model)
    if traced is not None and traced[0] == sig:
        graph = traced[1]
    else:
        graph = trace(model)
        if not leaf_root:
            _TRACES[model] = (sig, graph)
    root = nn.Sequential(model) if leaf_root else model
    # Parameters used outside leaf layers (get_attr) become coefficients that must keep their
    # gradient, so lowering only drops autograd when there are none.
    functional_params = any(n.op == "get_attr" for n in graph.nodes)
    # Constants made while lowering are cached, so they must not be inference tensors.
    with (
        torch.inference_mode(False),
        torch.set_grad_enabled(functional_params and torch.is_grad_enabled()),
    ):
        probe = x.detach().clone() if x.is_inference() else x.detach()
        lowerer = _Lowerer(root, probe)
        bound_graph = lowerer.run(graph)
    if not leaf_root and not lowerer.has_tensor_constants:
        entry = _GRAPHS.setdefault(model, {})
        if len(entry) >= _MAX_GRAPHS_PER_MODEL:
            entry.pop(next(iter(entry)))
        entry[key] = bound_graph
    return bound_graph


__all__ = ["SUPPORTED_LAYERS", "BoundGraph", "Node", "build_graph", "trace"]
