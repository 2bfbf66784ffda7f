"""A user's model seen as a pixel-space classifier, the form every attack and certificate takes.

Attacks call ``model(x) -> logits`` with ``x`` in the threat model's pixel box. A user's module may
instead expect normalised inputs (the normalisation lives in its data transforms), return a dict or
a tuple, or need a custom call; :class:`ClassifierView` adapts it without touching it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from advtrain.models.normalize import Normalize
from advtrain.normalization import Normalization

#: ``forward_fn(model, x) -> logits``: how to get logits from a model that is not called plainly.
ForwardFn = Callable[[nn.Module, Tensor], Any]
#: Where the logits are in a model's output: a key of a dict, an index of a tuple, an attribute.
OutputKey = int | str


def select_output(out: Any, key: OutputKey | None) -> Any:
    """``out[key]`` for dicts and sequences, else ``getattr(out, key)``; ``out`` itself for
    ``key=None``."""
    if key is None:
        return out
    if isinstance(key, str) and not isinstance(out, dict) and hasattr(out, key):
        return getattr(out, key)
    return out[key]


class ClassifierView(nn.Module):
    """``logits = select(forward_fn(model, normalize(x)))``: a pixel-space classifier view.

    The wrapped model is a registered submodule, so the attacks' state guard (train/eval modes,
    ``requires_grad``, BatchNorm statistics) reaches every one of its layers, and the
    normalisation is an advtrain :class:`~advtrain.models.Normalize` layer, which interval and
    linear bound propagation pass through exactly.

    Args:
        model: The user's module.
        normalization: The normalisation its inputs need (``None``: it takes pixels).
        output_key: Where the logits are in its output (``None``: the output is the logits).
        forward_fn: ``forward_fn(model, x)`` instead of ``model(x)``.
    """

    def __init__(
        self,
        model: nn.Module,
        normalization: Normalization | None = None,
        output_key: OutputKey | None = None,
        forward_fn: ForwardFn | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.normalization = normalization
        self.normalize: Normalize | None = None
        if normalization is not None:
            device = next((p.device for p in model.parameters()), None)
            layer = Normalize(normalization.mean, normalization.std)
            self.normalize = layer if device is None else layer.to(device)
        self.output_key = output_key
        self.forward_fn = forward_fn

    @classmethod
    def of(
        cls,
        model: nn.Module,
        normalization: Normalization | None = None,
        output_key: OutputKey | None = None,
        forward_fn: ForwardFn | None = None,
    ) -> nn.Module:
        """The view, or ``model`` itself when nothing needs adapting (no extra module call)."""
        if normalization is None and output_key is None and forward_fn is None:
            return model
        return cls(model, normalization, output_key, forward_fn)

    def forward(self, x: Tensor) -> Any:
        if self.normalize is not None:
            if self.normalize.mean.device != x.device:  # the model moved since the view was made
                self.normalize.to(x.device)
            x = self.normalize(x)
        out = self.model(x) if self.forward_fn is None else self.forward_fn(self.model, x)
        return select_output(out, self.output_key)

    def extra_repr(self) -> str:
        parts = []
        if self.output_key is not None:
            parts.append(f"output_key={self.output_key!r}")
        if self.forward_fn is not None:
            parts.append(f"forward_fn={getattr(self.forward_fn, '__name__', self.forward_fn)}")
        return ", ".join(parts)


__all__ = ["ClassifierView", "ForwardFn", "OutputKey", "select_output"]
