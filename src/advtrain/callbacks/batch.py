"""Finding inputs and targets in a user's batch and rebuilding it without touching its tensors."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor

from advtrain.lit.adapter import MisconfigurationException

Key = int | str


def split_batch(batch: Any, input_key: Key, target_key: Key) -> tuple[Tensor, Tensor]:
    """Returns ``(inputs, targets)`` from a tuple/list batch (by index) or a dict (by key).

    Raises:
        MisconfigurationException: If the batch has no tensor at one of the keys.
    """
    try:
        # tuples and lists (the common case) first: their check is cheaper than the ABCs'
        is_sequence = isinstance(batch, (tuple, list)) or (
            not isinstance(batch, Mapping)
            and isinstance(batch, Sequence)
            and not isinstance(batch, (str, bytes))
        )
        if is_sequence:
            if not isinstance(input_key, int) or not isinstance(target_key, int):
                raise KeyError(input_key)
        elif not isinstance(batch, Mapping):
            raise KeyError(input_key)
        x, y = batch[input_key], batch[target_key]
    except (KeyError, IndexError, TypeError):
        layout = (
            f"dict with keys {sorted(map(str, batch))}"
            if isinstance(batch, Mapping)
            else f"{type(batch).__name__} of length {len(batch)}"
            if isinstance(batch, Sequence)
            else type(batch).__name__
        )
        raise MisconfigurationException(
            f"cannot find inputs at {input_key!r} and targets at {target_key!r} in the batch "
            f"({layout}); set input_key/target_key to where your batch keeps them"
        ) from None
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise MisconfigurationException(
            f"the batch's inputs ({input_key!r}) and targets ({target_key!r}) must be tensors, got "
            f"{type(x).__name__} and {type(y).__name__}; set input_key/target_key"
        )
    return x, y


def replace_inputs(batch: Any, input_key: Key, new_x: Tensor) -> Any:
    """A shallow copy of ``batch`` with the inputs replaced; the original container is untouched."""
    # tuples and lists (the common case) skip the Mapping ABC check
    if not isinstance(batch, (tuple, list)) and isinstance(batch, Mapping):
        out = dict(batch)
        out[input_key] = new_x
        return type(batch)(out) if type(batch) is not dict else out  # type: ignore[call-arg]
    items = list(batch)
    items[input_key] = new_x  # type: ignore[index]
    if isinstance(batch, tuple):
        if hasattr(batch, "_fields"):  # namedtuple
            return type(batch)(*items)
        return tuple(items)
    return items
