"""The representations a data audit scores: the input of a named layer, captured with a hook.

Poisoning detectors work on a model's internal representation of each training example
(Tran et al. 2018 and Chen et al. 2018 use the penultimate layer: the input of the last
``nn.Linear``). :func:`layer_inputs` runs the model once over the examples, in eval mode (restored
afterwards), and returns what a layer received, flattened per example.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from advtrain.modes import model_state_guard

#: ``layer`` values with a meaning of their own: the model's own input, the input of the last /
#: first ``nn.Linear``.
SPECIAL_LAYERS = ("input", "last_linear", "first_linear")


def find_layer(model: nn.Module, layer: str) -> nn.Module | None:
    """The module whose input is taken: ``"last_linear"`` (the penultimate features),
    ``"first_linear"``, ``"input"`` (``None``: the model's input) or a name of
    ``model.named_modules()``.

    Raises:
        ValueError: No such module, or no ``nn.Linear`` for the special names.
    """
    if layer == "input":
        return None
    if layer in ("last_linear", "first_linear"):
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ValueError(
                f"layer={layer!r} needs an nn.Linear in the model, found none; name the layer "
                "whose input holds the features (one of model.named_modules())"
            )
        return linears[-1] if layer == "last_linear" else linears[0]
    modules = dict(model.named_modules())
    if layer not in modules or layer == "":
        names = [n for n in modules if n][:12]
        raise ValueError(
            f"the model has no layer {layer!r}; use one of {list(SPECIAL_LAYERS)} or a name "
            f"from model.named_modules(), e.g. {names}"
        )
    return modules[layer]


def layer_inputs(
    model: nn.Module,
    batches: Iterable[Tensor],
    layer: str = "last_linear",
) -> Tensor:
    """What ``layer`` (see :func:`find_layer`) receives for every example, flattened: ``(n, d)``
    float32 on the CPU, in the order of ``batches`` (input tensors on the model's device)."""
    module = find_layer(model, layer)
    captured: list[Tensor] = []

    def hook(_module: nn.Module, args: tuple[object, ...]) -> None:
        first = args[0]
        if not isinstance(first, Tensor):
            raise TypeError(f"layer {layer!r} received {type(first).__name__}, not a tensor")
        captured.append(first.detach().flatten(1).float().cpu())

    handle = None if module is None else module.register_forward_pre_hook(hook)
    try:
        with torch.no_grad(), model_state_guard(model, "eval"):
            for xb in batches:
                if module is None:
                    captured.append(xb.detach().flatten(1).float().cpu())
                else:
                    model(xb)
    finally:
        if handle is not None:
            handle.remove()
    if not captured:
        raise ValueError("no examples: the audit needs at least one batch")
    return torch.cat(captured)


__all__ = ["SPECIAL_LAYERS", "find_layer", "layer_inputs"]
