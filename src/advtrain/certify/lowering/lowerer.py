"""Tracing a model with ``torch.fx`` and lowering the trace to a :class:`BoundGraph` (cached)."""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, fx, nn

from advtrain.certify.graph import BoundGraph, Node
from advtrain.certify.lowering.common import Perturbed, unsupported
from advtrain.certify.lowering.functions import lower_function
from advtrain.certify.lowering.layers import lower_module
from advtrain.certify.ops import BoundOp, InputOp, RunContext
from advtrain.models.normalize import Normalize


class _Tracer(fx.Tracer):
    """Keeps every ``torch.nn`` layer and advtrain's ``Normalize`` as a leaf."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        """``Normalize`` and ``torch.nn``'s own layers are leaves."""
        if isinstance(m, Normalize):
            return True
        return super().is_leaf_module(m, module_qualified_name)


def _is_leaf_type(m: nn.Module) -> bool:
    """A layer the tracer keeps whole (traced as a one-layer model when it is the root)."""
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


class Lowerer:
    """Interprets a traced graph on a concrete batch, building the bound graph.

    Values that depend on the input become :class:`Perturbed` nodes (through
    :func:`~advtrain.certify.lowering.layers.lower_module` and
    :func:`~advtrain.certify.lowering.functions.lower_function`); everything else is evaluated.

    Attributes:
        root: The traced module.
        modules: Its submodules by qualified name.
        nodes: The bound-graph nodes built so far (node 0 is the input).
        dropouts: Dropout layers folded away as the identity.
        ctx: Run context of the concrete evaluation (records BatchNorm batch statistics).
        has_tensor_constants: A tensor constant was captured (the graph must not be cached).
        x: The concrete batch.
    """

    def __init__(self, root: nn.Module, x: Tensor) -> None:
        """Prepares to lower a trace of ``root`` on the batch ``x``."""
        self.root = root
        self.modules = dict(root.named_modules())
        self.nodes: list[Node] = [Node(InputOp("input"), (), tuple(x.shape[1:]))]
        self.nodes[0].op.index = 0
        self.dropouts: list[tuple[str, nn.Module]] = []
        self.ctx = RunContext(batch_stats=True)
        self.has_tensor_constants = False
        self.x = x

    def add(self, op: BoundOp, inputs: Sequence[Perturbed]) -> Perturbed:
        """Appends a node applying ``op`` to ``inputs``; returns its (concrete) value."""
        op.index = len(self.nodes)
        value = op.forward(self.ctx, *[p.value for p in inputs])
        self.nodes.append(Node(op, tuple(p.index for p in inputs), tuple(value.shape[1:])))
        return Perturbed(op.index, value)

    def const(self, value: Any) -> Any:
        """Records a value that does not depend on the input."""
        if isinstance(value, Tensor):
            self.has_tensor_constants = True
        return value

    def concrete(self, node: fx.Node, args: Any, kwargs: Any) -> Any:
        """Evaluates ``node`` on concrete arguments."""
        if node.op == "call_module":
            return self.modules[str(node.target)](*args, **kwargs)
        if node.op == "call_method":
            obj, *rest = args
            return getattr(obj, str(node.target))(*rest, **kwargs)
        return node.target(*args, **kwargs)  # type: ignore[operator]

    def run(self, graph: fx.Graph) -> BoundGraph:
        """Lowers every node of ``graph``.

        Raises:
            TypeError: For a model with several inputs, an unsupported layer or operation
                (named), or an output that is not one input-dependent tensor.
        """
        env: dict[fx.Node, Any] = {}
        output: Any = None
        seen_input = False
        for node in graph.nodes:
            if node.op == "placeholder":
                env[node] = self._placeholder(node, first=not seen_input)
                seen_input = True
            elif node.op == "get_attr":
                env[node] = self.const(_get_attr(self.root, str(node.target)))
            elif node.op == "output":
                output = fx.node.map_arg(node.args[0], lambda n: env[n])
                break
            else:
                env[node] = self._call(node, env)
        if not isinstance(output, Perturbed):
            raise TypeError(
                "the model must return a single tensor of logits that depends on its input; got "
                f"{type(output).__name__}"
            )
        return BoundGraph(self.nodes, output.index, self.dropouts)

    def _placeholder(self, node: fx.Node, first: bool) -> Any:
        """The input (the first placeholder), or the default of a later one."""
        if first:
            return Perturbed(0, self.x)
        if node.args:
            return node.args[0]
        raise TypeError(
            f"the model's forward takes more than one input ({node.target!r}); "
            "bound propagation needs forward(x)"
        )

    def _call(self, node: fx.Node, env: dict[fx.Node, Any]) -> Any:
        """A ``call_*`` node: evaluated if no argument depends on the input, else lowered."""
        args = fx.node.map_arg(node.args, lambda n: env[n])
        kwargs = fx.node.map_arg(node.kwargs, lambda n: env[n])
        if not any(isinstance(a, Perturbed) for a in _flat(args, kwargs)):
            return self.const(self.concrete(node, args, kwargs))
        if node.op == "call_module":
            return lower_module(self, str(node.target), args, kwargs)
        if node.op in ("call_function", "call_method"):
            return lower_function(self, node, args, kwargs)
        raise unsupported(node.name, node.op)  # pragma: no cover - fx has no other kinds


def _get_attr(root: nn.Module, target: str) -> Any:
    """The attribute at the dotted path ``target`` of ``root``."""
    obj: Any = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _flat(args: Any, kwargs: Any) -> list[Any]:
    """Every leaf value of ``args`` and ``kwargs`` (lists, tuples and dicts are opened)."""
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


# ------------------------------------------------------------------------------------------------
# Cache
# ------------------------------------------------------------------------------------------------
_TRACES: weakref.WeakKeyDictionary[nn.Module, tuple[Any, fx.Graph]] = weakref.WeakKeyDictionary()
_GRAPHS: weakref.WeakKeyDictionary[nn.Module, dict[Any, BoundGraph]] = weakref.WeakKeyDictionary()
_MAX_GRAPHS_PER_MODEL = 8


def _signature(model: nn.Module) -> tuple[Any, ...]:
    """What identifies the structure of ``model``: its submodules, by name, identity and type."""
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
        lowerer = Lowerer(root, probe)
        bound_graph = lowerer.run(graph)
    if not leaf_root and not lowerer.has_tensor_constants:
        entry = _GRAPHS.setdefault(model, {})
        if len(entry) >= _MAX_GRAPHS_PER_MODEL:
            entry.pop(next(iter(entry)))
        entry[key] = bound_graph
    return bound_graph


__all__ = ["Lowerer", "build_graph", "trace"]
