"""Lowering of ``call_module`` nodes: one handler per supported ``torch.nn`` layer type."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.dropout import _DropoutNd

from advtrain.certify.lowering.common import Perturbed, leaky_relu_op, unsupported
from advtrain.certify.ops import (
    AvgPoolOp,
    BatchNormOp,
    ConvOp,
    DenseOp,
    MaxPoolOp,
    MonotoneOp,
    NormalizeOp,
    ReLUOp,
    ReshapeOp,
)
from advtrain.models.normalize import Normalize

if TYPE_CHECKING:
    from advtrain.certify.lowering.lowerer import Lowerer

#: Lowers the layer ``m`` named ``name`` applied to ``x``.
ModuleHandler = Callable[["Lowerer", str, Any, Perturbed], Perturbed]

#: Elementwise non-decreasing activations supported by IBP (CROWN: ReLU and LeakyReLU only).
MONOTONE_MODULES: dict[type[nn.Module], Callable[[Any], Callable[[Tensor], Tensor]]] = {
    nn.Sigmoid: lambda m: torch.sigmoid,
    nn.Tanh: lambda m: torch.tanh,
    nn.ReLU6: lambda m: F.relu6,
    nn.Hardtanh: lambda m: lambda t: F.hardtanh(t, m.min_val, m.max_val),
    nn.ELU: lambda m: lambda t: F.elu(t, m.alpha),
    nn.Softplus: lambda m: lambda t: F.softplus(t, m.beta, m.threshold),
    nn.Hardsigmoid: lambda m: F.hardsigmoid,
}


def _shape(x: Perturbed) -> tuple[int, ...]:
    """The shape of ``x`` without the batch dimension."""
    return tuple(x.value.shape[1:])


def _identity(lw: Lowerer, name: str, m: nn.Module, x: Perturbed) -> Perturbed:
    """Identity and dropout (recorded, so that its mode is checked at every call)."""
    if isinstance(m, _DropoutNd):
        lw.dropouts.append((name, m))
    return x


def _linear(lw: Lowerer, name: str, m: nn.Linear, x: Perturbed) -> Perturbed:
    """``nn.Linear``."""
    return lw.add(DenseOp(name, m), [x])


def _conv(lw: Lowerer, name: str, m: nn.Conv2d, x: Perturbed) -> Perturbed:
    """``nn.Conv2d``."""
    return lw.add(ConvOp(name, m, _shape(x)), [x])


def _batch_norm(lw: Lowerer, name: str, m: _BatchNorm, x: Perturbed) -> Perturbed:
    """``nn.BatchNorm1d``/``nn.BatchNorm2d`` (the latter on ``(C, H, W)`` inputs)."""
    shape = _shape(x)
    if isinstance(m, nn.BatchNorm2d) and len(shape) != 3:
        raise unsupported(name, f"BatchNorm2d on inputs of shape {shape}")
    return lw.add(BatchNormOp(name, m, shape), [x])


def _other_norm(lw: Lowerer, name: str, m: nn.Module, x: Perturbed) -> Perturbed:
    """Other BatchNorm variants (e.g. ``BatchNorm3d``, ``SyncBatchNorm``) are not supported."""
    raise unsupported(name, type(m).__name__)


def _normalize(lw: Lowerer, name: str, m: Normalize, x: Perturbed) -> Perturbed:
    """:class:`advtrain.models.Normalize`."""
    return lw.add(NormalizeOp(name, m, _shape(x)), [x])


def _flatten(lw: Lowerer, name: str, m: nn.Flatten, x: Perturbed) -> Perturbed:
    """``nn.Flatten`` that keeps the batch dimension."""
    if m.start_dim == 0:
        raise unsupported(name, "Flatten(start_dim=0), which mixes the batch")
    out = torch.flatten(x.value, m.start_dim, m.end_dim)
    return lw.add(ReshapeOp(name, _shape(x), out.shape[1:]), [x])


def _relu(lw: Lowerer, name: str, m: nn.ReLU, x: Perturbed) -> Perturbed:
    """``nn.ReLU``."""
    return lw.add(ReLUOp(name), [x])


def _leaky_relu(lw: Lowerer, name: str, m: nn.LeakyReLU, x: Perturbed) -> Perturbed:
    """``nn.LeakyReLU``."""
    return lw.add(leaky_relu_op(name, m.negative_slope), [x])


def _avg_pool(lw: Lowerer, name: str, m: nn.AvgPool2d, x: Perturbed) -> Perturbed:
    """``nn.AvgPool2d``."""
    op = AvgPoolOp(
        name,
        _shape(x),
        m.kernel_size,
        m.stride,
        m.padding,
        m.ceil_mode,
        m.count_include_pad,
        m.divisor_override,
    )
    return lw.add(op, [x])


def _adaptive_avg_pool(lw: Lowerer, name: str, m: nn.AdaptiveAvgPool2d, x: Perturbed) -> Perturbed:
    """``nn.AdaptiveAvgPool2d``."""
    return lw.add(AvgPoolOp(name, _shape(x), None, adaptive_output=m.output_size), [x])


def _max_pool(lw: Lowerer, name: str, m: nn.MaxPool2d, x: Perturbed) -> Perturbed:
    """``nn.MaxPool2d`` (without ``return_indices``)."""
    if m.return_indices:
        raise unsupported(name, "MaxPool2d(return_indices=True)")
    op = MaxPoolOp(name, _shape(x), m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode)
    return lw.add(op, [x])


#: Handlers by layer type, tried in order with ``isinstance`` (the first match wins).
MODULE_HANDLERS: tuple[tuple[type | tuple[type, ...], ModuleHandler], ...] = (
    ((nn.Identity, _DropoutNd), _identity),
    (nn.Linear, _linear),
    (nn.Conv2d, _conv),
    ((nn.BatchNorm1d, nn.BatchNorm2d), _batch_norm),
    (_BatchNorm, _other_norm),
    (Normalize, _normalize),
    (nn.Flatten, _flatten),
    (nn.ReLU, _relu),
    (nn.LeakyReLU, _leaky_relu),
    (nn.AvgPool2d, _avg_pool),
    (nn.AdaptiveAvgPool2d, _adaptive_avg_pool),
    (nn.MaxPool2d, _max_pool),
)


def lower_module(lw: Lowerer, target: str, args: Any, kwargs: Any) -> Perturbed:
    """Lowers a call of the layer ``target`` on one perturbed tensor.

    Raises:
        TypeError: For a layer called with several inputs or of an unsupported type (named).
    """
    m = lw.modules[target]
    name = f"{target} ({type(m).__name__})"
    if len(args) != 1 or kwargs or not isinstance(args[0], Perturbed):
        raise unsupported(name, "a layer called with several inputs")
    x: Perturbed = args[0]
    for types, handler in MODULE_HANDLERS:
        if isinstance(m, types):
            return handler(lw, name, m, x)
    for cls, make in MONOTONE_MODULES.items():
        if type(m) is cls:
            if isinstance(m, nn.ELU) and m.alpha < 0:
                break
            return lw.add(MonotoneOp(name, make(m)), [x])
    raise unsupported(name, f"the layer type {type(m).__name__}")


__all__ = ["MODULE_HANDLERS", "MONOTONE_MODULES", "ModuleHandler", "lower_module"]
