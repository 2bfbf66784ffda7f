"""Replacing a LightningModule's ``training_step`` for the duration of ``fit``, and restoring it.

The adversarial-training callbacks put an instance attribute in front of the class's method, so
the user's module and class stay unmodified; Lightning (and the DDP wrapper) look the hook up on
the instance and call the replacement.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from advtrain.lit.adapter import MisconfigurationException, is_param_in_hook_signature

if TYPE_CHECKING:
    from lightning.pytorch import LightningModule


def check_not_wrapped(pl_module: LightningModule) -> None:
    """Raises if an advtrain callback already replaced ``pl_module.training_step``.

    Raises:
        MisconfigurationException: Two adversarial-training callbacks on one Trainer.
    """
    if getattr(pl_module.training_step, "_advtrain_wrapped", False):
        raise MisconfigurationException(
            "the module's training_step is already wrapped by another adversarial-training "
            "callback (AdversarialTraining or FreeAdversarialTraining); use one per Trainer"
        )


def wrap_training_step(
    pl_module: LightningModule, replacement: Callable[..., Any]
) -> Callable[..., Any]:
    """Installs ``replacement`` as ``pl_module.training_step``; returns the original step, called
    as ``original(batch, batch_idx, ...)`` whether or not the module's step takes ``batch_idx``.

    Raises:
        MisconfigurationException: If another advtrain callback already wrapped the step.
    """
    check_not_wrapped(pl_module)
    original = pl_module.training_step

    def training_step(*args: Any, **kwargs: Any) -> Any:
        return replacement(*args, **kwargs)

    training_step._advtrain_wrapped = True  # type: ignore[attr-defined]
    pl_module.training_step = training_step  # type: ignore[method-assign]
    # Lightning passes batch_idx only to a step that takes it (by name or as a second argument);
    # the replacement always receives it (it takes *args), and drops it again for such a step.
    if is_param_in_hook_signature(original, "batch_idx", min_args=2):
        return original

    def without_batch_idx(batch: Any, batch_idx: int, *args: Any, **kwargs: Any) -> Any:
        return original(batch, *args, **kwargs)

    return without_batch_idx


def unwrap_training_step(pl_module: LightningModule) -> None:
    """Removes the replacement installed by :func:`wrap_training_step`, if any."""
    if "training_step" in vars(pl_module):
        del pl_module.training_step
