"""Lowering of ``call_function``/``call_method`` nodes through two dispatch tables.

:data:`FUNCTION_HANDLERS` maps a function (``operator.add``, ``torch.relu``, ``F.max_pool2d``...)
and :data:`METHOD_HANDLERS` a tensor method name (``"view"``, ``"add"``...) to its handler; an
operation in neither table is an error that names it.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx

from advtrain.certify.lowering.common import (
    FxCall,
    is_perturbed,
    leaky_relu_op,
    unsupported,
    unwrap,
)
from advtrain.certify.ops import (
    AddOp,
    AvgPoolOp,
    Coeffs,
    MaxPoolOp,
    MonotoneOp,
    ReLUOp,
    ReshapeOp,
    RunContext,
    ScaleOp,
)

if TYPE_CHECKING:
    from advtrain.certify.lowering.lowerer import Lowerer

#: Lowers one call (returns a perturbed value, or a constant for shape queries).
FunctionHandler = Callable[["Lowerer", FxCall], Any]


def _coeff(c: Any, like: Tensor) -> Tensor:
    """The constant ``c`` as a tensor with as many dimensions as ``like`` (batch included).

    Raises:
        ValueError: If ``c`` has more dimensions than ``like``.
    """
    t = torch.as_tensor(c, dtype=like.dtype, device=like.device)
    while t.dim() < like.dim():
        t = t.unsqueeze(0)
    if t.dim() > like.dim():
        raise ValueError(f"constant of shape {tuple(t.shape)} does not broadcast to the batch")
    return t


def _constant(a: Tensor | None, b: Tensor | None) -> Callable[[RunContext], Coeffs]:
    """Fixed coefficients ``(a, b)`` of a :class:`ScaleOp`."""
    return lambda ctx: (a, b)


def _scale(call: FxCall, c: Any, like: Tensor) -> ScaleOp:
    """Multiplication by the constant ``c``, which must not vary over the batch."""
    a = _coeff(c, like)
    if a.dim() > 0 and a.shape[0] > 1:
        raise unsupported(call.name, "multiplication by a tensor that varies over the batch")
    return ScaleOp(call.name, _constant(a, None))


def _query(lw: Lowerer, call: FxCall) -> Any:
    """``x.size()``, ``x.dim()``: constants."""
    return lw.concrete(call.node, unwrap(call.args), unwrap(call.kwargs))


def _getattr(lw: Lowerer, call: FxCall) -> Any:
    """``x.shape``, ``x.ndim``, ``x.dtype``, ``x.device``: constants."""
    if call.args[1] in ("shape", "ndim", "dtype", "device"):
        return _query(lw, call)
    raise unsupported(call.name, "the operation getattr")


def _identity(lw: Lowerer, call: FxCall) -> Any:
    """``contiguous``, ``clone``: the value itself."""
    return call.first


def _dropout(lw: Lowerer, call: FxCall) -> Any:
    """``F.dropout``: the identity when it is off (``training=False`` or ``p=0``)."""
    if not call.arg(2, "training", True) or float(call.arg(1, "p", 0.5)) == 0:
        return call.first
    raise unsupported(
        call.name,
        "F.dropout with training=True (pass training=self.training"
        " and call model.eval(), or use nn.Dropout)",
    )


def _add(lw: Lowerer, call: FxCall) -> Any:
    """``a + b``: a residual addition, or a constant shift."""
    a, b = call.args[0], call.args[1]
    if call.kwargs.get("alpha", 1) != 1:
        raise unsupported(call.name, "add with alpha")
    if is_perturbed(a) and is_perturbed(b):
        return lw.add(AddOp(call.name), [a, b])
    p, c = (a, b) if is_perturbed(a) else (b, a)
    shift = _coeff(c, p.value)
    return lw.add(ScaleOp(call.name, _constant(None, shift)), [p])


def _sub(lw: Lowerer, call: FxCall) -> Any:
    """``a - b``: a residual difference, or a constant shift (negating ``b`` if it is perturbed)."""
    a, b = call.args[0], call.args[1]
    if is_perturbed(a) and is_perturbed(b):
        return lw.add(AddOp(call.name, -1.0), [a, b])
    if is_perturbed(a):
        shift = -_coeff(b, a.value)
        return lw.add(ScaleOp(call.name, _constant(None, shift)), [a])
    shift = _coeff(a, b.value)
    neg = -torch.ones_like(shift)
    return lw.add(ScaleOp(call.name, _constant(neg, shift)), [b])


def _neg(lw: Lowerer, call: FxCall) -> Any:
    """``-x``."""
    neg = _coeff(-1.0, call.first.value)
    return lw.add(ScaleOp(call.name, _constant(neg, None)), [call.first])


def _mul(lw: Lowerer, call: FxCall) -> Any:
    """``a * c`` with a constant ``c``."""
    a, b = call.args[0], call.args[1]
    if is_perturbed(a) and is_perturbed(b):
        raise unsupported(call.name, "the product of two input-dependent tensors")
    p, c = (a, b) if is_perturbed(a) else (b, a)
    return lw.add(_scale(call, c, p.value), [p])


def _div(lw: Lowerer, call: FxCall) -> Any:
    """``a / c`` with a constant ``c`` (true division only)."""
    a, b = call.args[0], call.args[1]
    if is_perturbed(b) or call.kwargs.get("rounding_mode") is not None:
        raise unsupported(call.name, "division by an input-dependent tensor")
    inv = 1.0 / torch.as_tensor(b, dtype=a.value.dtype, device=a.value.device)
    return lw.add(_scale(call, inv, a.value), [a])


def _relu(lw: Lowerer, call: FxCall) -> Any:
    """``relu(x)``."""
    return lw.add(ReLUOp(call.name), [call.first])


def _leaky_relu(lw: Lowerer, call: FxCall) -> Any:
    """``F.leaky_relu(x, negative_slope)``."""
    slope = float(call.arg(1, "negative_slope", 0.01))
    return lw.add(leaky_relu_op(call.name, slope), [call.first])


def _monotone(fn: Callable[[Tensor], Tensor]) -> FunctionHandler:
    """The handler of the monotone activation ``fn`` (IBP only)."""
    return lambda lw, call: lw.add(MonotoneOp(call.name, fn), [call.first])


def _reshape(lw: Lowerer, call: FxCall) -> Any:
    """``flatten``, ``view``, ``reshape`` that keep the batch dimension."""
    first = call.first
    out = lw.concrete(call.node, unwrap(call.args), unwrap(call.kwargs))
    if out.dim() == 0 or out.shape[0] != first.value.shape[0]:
        raise unsupported(call.name, "a reshape that changes the batch dimension")
    return lw.add(ReshapeOp(call.name, first.value.shape[1:], out.shape[1:]), [first])


#: ``(name, default)`` of the arguments of ``F.avg_pool2d`` after the input.
_AVG_POOL_ARGS: tuple[tuple[str, Any], ...] = (
    ("kernel_size", None),
    ("stride", None),
    ("padding", 0),
    ("ceil_mode", False),
    ("count_include_pad", True),
    ("divisor_override", None),
)
#: The same for ``F.max_pool2d`` (``return_indices``, which must be off, is checked apart).
_MAX_POOL_ARGS: tuple[tuple[str, Any], ...] = (
    ("kernel_size", None),
    ("stride", None),
    ("padding", 0),
    ("dilation", 1),
    ("ceil_mode", False),
)


def _args_after_input(call: FxCall, spec: tuple[tuple[str, Any], ...]) -> list[Any]:
    """The arguments ``spec`` following the input, positional or by keyword."""
    return [call.arg(i + 1, name, default) for i, (name, default) in enumerate(spec)]


def _avg_pool(lw: Lowerer, call: FxCall) -> Any:
    """``F.avg_pool2d``."""
    vals = _args_after_input(call, _AVG_POOL_ARGS)
    return lw.add(AvgPoolOp(call.name, call.first.value.shape[1:], *vals), [call.first])


def _adaptive_avg_pool(lw: Lowerer, call: FxCall) -> Any:
    """``F.adaptive_avg_pool2d``."""
    size = call.arg(1, "output_size", None)
    shape = call.first.value.shape[1:]
    return lw.add(AvgPoolOp(call.name, shape, None, adaptive_output=size), [call.first])


def _max_pool(lw: Lowerer, call: FxCall) -> Any:
    """``F.max_pool2d`` / ``torch.max_pool2d`` (without ``return_indices``)."""
    vals = _args_after_input(call, _MAX_POOL_ARGS)
    if call.arg(6, "return_indices", False):
        raise unsupported(call.name, "max_pool2d(return_indices=True)")
    return lw.add(MaxPoolOp(call.name, call.first.value.shape[1:], *vals), [call.first])


def _table(groups: dict[FunctionHandler, tuple[Any, ...]]) -> dict[Any, FunctionHandler]:
    """``{handler: targets}`` → ``{target: handler}``."""
    return {target: handler for handler, targets in groups.items() for target in targets}


_SIGMOID, _TANH = _monotone(torch.sigmoid), _monotone(torch.tanh)

#: Handlers of ``call_function`` nodes, by function.
FUNCTION_HANDLERS: dict[Any, FunctionHandler] = _table(
    {
        _getattr: (getattr,),
        _dropout: (F.dropout,),
        _add: (operator.add, torch.add, operator.iadd),
        _sub: (operator.sub, torch.sub, operator.isub),
        _neg: (operator.neg, torch.neg),
        _mul: (operator.mul, torch.mul, operator.imul),
        _div: (operator.truediv, torch.div, torch.true_divide),
        _relu: (F.relu, torch.relu),
        _leaky_relu: (F.leaky_relu,),
        _SIGMOID: (torch.sigmoid, F.sigmoid),
        _TANH: (torch.tanh, F.tanh),
        _reshape: (torch.flatten,),
        _avg_pool: (F.avg_pool2d,),
        _adaptive_avg_pool: (F.adaptive_avg_pool2d,),
        _max_pool: (F.max_pool2d, torch.max_pool2d),
    }
)

#: Handlers of ``call_method`` nodes, by method name.
METHOD_HANDLERS: dict[str, FunctionHandler] = _table(
    {
        _query: ("size", "dim"),
        _identity: ("contiguous", "clone"),
        _add: ("add",),
        _sub: ("sub",),
        _neg: ("neg",),
        _mul: ("mul",),
        _div: ("div", "true_divide"),
        _relu: ("relu",),
        _SIGMOID: ("sigmoid",),
        _TANH: ("tanh",),
        _reshape: ("flatten", "view", "reshape"),
    }
)


def lower_function(lw: Lowerer, node: fx.Node, args: Any, kwargs: Any) -> Any:
    """Lowers a ``call_function``/``call_method`` node whose arguments depend on the input.

    Raises:
        TypeError: For an operation bound propagation does not support (named).
    """
    target = node.target
    tname = target if isinstance(target, str) else getattr(target, "__name__", str(target))
    call = FxCall(node, args, kwargs, f"{node.name} ({tname})")
    table: dict[Any, FunctionHandler] = (
        METHOD_HANDLERS if node.op == "call_method" else FUNCTION_HANDLERS
    )
    try:
        handler = table.get(target)
    except TypeError:  # an unhashable callable is no supported operation
        handler = None
    if handler is None:
        raise unsupported(call.name, f"the operation {tname}")
    return handler(lw, call)


__all__ = ["FUNCTION_HANDLERS", "METHOD_HANDLERS", "FunctionHandler", "lower_function"]
