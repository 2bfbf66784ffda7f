"""Bounds are computed in the model's own precision, never under autocast.

Lightning's ``precision="bf16-mixed"``/``"16-mixed"`` runs validation and training steps under
``torch.autocast``, which would run the bound propagation's matrix products in bfloat16/float16.
Their rounding is not accounted for by interval or linear bounds, so a certificate computed that
way can claim more than the float32 model guarantees: on a digits SmallCNN under bf16 autocast, 44
of 160 IBP lower margin bounds came out above the float32 ones. Float16 also overflows on the
wide intervals of an untrained network (Gowal et al. 2018 warm up eps for this reason), which a
GradScaler would read as overflowing gradients and skip the step, again and again.

So every bound computation (verification and the certified-training losses alike) switches
autocast off for the input's device: the bounds are as sound in a mixed-precision run as in a
float32 one, at float32's cost.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import torch

from advtrain.certify.spec import InputSet

P = ParamSpec("P")
R = TypeVar("R")


def without_autocast(fn: Callable[P, R]) -> Callable[P, R]:
    """Runs ``fn(model, inputs: InputSet, ...)`` with autocast disabled on the inputs' device."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        inputs = args[1] if len(args) > 1 else kwargs["inputs"]
        assert isinstance(inputs, InputSet)
        with torch.autocast(inputs.x.device.type, enabled=False):
            return fn(*args, **kwargs)

    return wrapper


__all__ = ["without_autocast"]
