"""The model's modes during an attack or a measurement, and their exact restoration afterwards.

:func:`model_state_guard` is the context manager behind every attack's promise to leave the model
as found (``training`` flags, ``requires_grad``, ``.grad``, BatchNorm running statistics); the
evaluation pipeline, the certificates and the callbacks use it for their own forward passes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

#: BatchNorm/Dropout behaviour during an attack (see :func:`model_state_guard`).
BNMode = Literal["eval", "train", "train_frozen"]
BN_MODES: tuple[str, ...] = ("eval", "train", "train_frozen")


def check_bn_mode(bn_mode: str) -> str:
    """Validates a :data:`BNMode`.

    Raises:
        ValueError: If ``bn_mode`` is not one of :data:`BN_MODES`.
    """
    if bn_mode not in BN_MODES:
        raise ValueError(f"bn_mode must be one of {list(BN_MODES)}, got {bn_mode!r}")
    return bn_mode


@contextlib.contextmanager
def model_state_guard(model: nn.Module, bn_mode: str = "eval") -> Iterator[nn.Module]:
    """Puts ``model`` in the attack's mode and restores everything on exit.

    Inside the block parameters do not require gradients (so attacks build no parameter graph),
    and BatchNorm/Dropout behave according to ``bn_mode``:

    * ``"eval"`` (default): the whole model in eval mode; BatchNorm uses running statistics.
      Deterministic and the usual choice for evaluation and for TRADES-style training.
    * ``"train"``: the modes the model already has (a training model keeps batch statistics and
      dropout); BatchNorm running statistics updated by the attack's forward passes are restored.
    * ``"train_frozen"``: the model in train mode (batch statistics) with the running statistics
      restored afterwards; the same as ``"train"`` for a model already in train mode.

    On exit each module's ``training`` flag, every parameter's ``requires_grad`` and ``.grad``, and
    every BatchNorm buffer are exactly as they were on entry, even if the block raised.
    """
    check_bn_mode(bn_mode)
    modes = [(m, m.training) for m in model.modules()]
    # Where no module overrides train() or __setattr__, switching modes is exactly setting each
    # module's plain ``training`` attribute (what nn.Module.train does, without its recursion and
    # __setattr__'s checks: about half of this guard's cost on a small network).
    set_flags = all(
        type(m).train is nn.Module.train and type(m).__setattr__ is nn.Module.__setattr__
        for m, _ in modes
    )
    set_attribute = object.__setattr__ if set_flags else setattr
    params = list(model.parameters())
    requires = [p.requires_grad for p in params]
    grads = [p.grad for p in params]
    bn_buffers: list[tuple[Tensor, Tensor]] = []
    if bn_mode != "eval":
        for m in model.modules():
            if isinstance(m, _BatchNorm):
                for buf in m.buffers(recurse=False):
                    bn_buffers.append((buf, buf.detach().clone()))
    try:
        for p in params:
            p.requires_grad_(False)
        if bn_mode != "train":
            if set_flags:
                for m, _ in modes:
                    set_attribute(m, "training", bn_mode == "train_frozen")
            else:
                model.train(bn_mode == "train_frozen")
        yield model
    finally:
        for m, training in modes:
            set_attribute(m, "training", training)
        for p, req, g in zip(params, requires, grads, strict=True):
            p.requires_grad_(req)
            p.grad = g
        with torch.no_grad():
            for buf, saved in bn_buffers:
                buf.copy_(saved)


__all__ = ["BN_MODES", "BNMode", "check_bn_mode", "model_state_guard"]
