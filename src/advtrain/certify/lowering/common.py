"""Pieces shared by the lowering of layers and of functions: values, calls and errors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.nn.functional as F
from torch import Tensor, fx

from advtrain.certify.ops import BoundOp, MonotoneOp, ReLUOp

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


class Perturbed:
    """Marks an fx value that depends on the perturbed input: the node index and its value."""

    __slots__ = ("index", "value")

    def __init__(self, index: int, value: Tensor) -> None:
        """The value ``value`` of the bound-graph node ``index``."""
        self.index = index
        self.value = value


@dataclass(frozen=True)
class FxCall:
    """A ``call_function``/``call_method`` node with its arguments evaluated.

    Attributes:
        node: The fx node.
        args: Positional arguments (:class:`Perturbed` where they depend on the input).
        kwargs: Keyword arguments.
        name: ``node_name (target_name)``, used for operator names and error messages.
    """

    node: fx.Node
    args: Any
    kwargs: Any
    name: str

    @property
    def first(self) -> Any:
        """The first positional argument (``None`` if there is none)."""
        return self.args[0] if self.args else None

    def arg(self, pos: int, name: str, default: Any) -> Any:
        """The argument at position ``pos`` or keyword ``name``, else ``default``."""
        if len(self.args) > pos:
            return self.args[pos]
        return self.kwargs.get(name, default)


def is_perturbed(v: Any) -> bool:
    """``v`` depends on the perturbed input."""
    return isinstance(v, Perturbed)


def unsupported(name: str, what: str) -> TypeError:
    """The error for an unsupported layer or operation ``what`` at ``name``."""
    return TypeError(
        f"bound propagation does not support {what} at {name!r}; supported layers: "
        f"{', '.join(SUPPORTED_LAYERS)}"
    )


def unwrap(v: Any) -> Any:
    """``v`` with every :class:`Perturbed` replaced by its concrete value (recursively)."""
    if isinstance(v, Perturbed):
        return v.value
    if isinstance(v, (list, tuple)):
        return type(v)(unwrap(i) for i in v)
    if isinstance(v, dict):
        return {k: unwrap(i) for k, i in v.items()}
    return v


def leaky_relu_op(name: str, slope: float) -> BoundOp:
    """LeakyReLU with negative slope ``slope``: relaxed for ``slope <= 1``, else monotone only.

    Raises:
        TypeError: For a negative slope (the activation is not monotone).
    """
    if slope < 0:
        raise unsupported(name, f"LeakyReLU with negative slope {slope} (not monotone)")
    if slope <= 1:
        return ReLUOp(name, slope)
    return MonotoneOp(name, lambda t: F.leaky_relu(t, slope))


__all__ = [
    "SUPPORTED_LAYERS",
    "FxCall",
    "Perturbed",
    "is_perturbed",
    "leaky_relu_op",
    "unsupported",
    "unwrap",
]
