"""The examples ``advtrain-eval`` evaluates, from advtrain's data modules or anyone else's.

advtrain's own data modules hand over their test split as tensors in pixel units
(``test_tensors``). Any other data module (a user's ``LightningDataModule``, or any object with
``<split>_dataloader()``) is read through its own loader: ``prepare_data()``, ``setup(stage)``,
then the first ``n`` examples of the chosen split. Where its transforms normalise, the
normalisation is found (a torchvision ``Normalize``, :mod:`advtrain.normalization`) or taken from
``data.normalization``, undone, and the model is evaluated through a view that normalises its
pixels again (:class:`~advtrain.models.view.ClassifierView`): eps stays in pixel units.

Contamination: the evaluated examples are compared with the data module's training split, example
by example (SHA-256 of each input tensor as the loader yields it); test examples that also occur
in the training data are counted and flagged (:func:`contamination`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from advtrain.normalization import (
    AUTO,
    Normalization,
    find_normalization,
    looks_normalised,
    parse_normalization,
)

SPLITS = ("test", "val", "train", "predict")
_STAGES = {"test": "test", "val": "validate", "train": "fit", "predict": "predict"}


@dataclass
class EvalData:
    """The evaluated examples (pixels), how the model must see them, and what is known of them.

    Attributes:
        x: Inputs in pixel units.
        y: Labels.
        normalization: The normalisation the model expects (``None``: pixels).
        source: ``"advtrain"`` or ``"data module"``.
        split: The split evaluated.
        raw: The inputs exactly as the loader gave them (for contamination hashes).
    """

    x: Tensor
    y: Tensor
    normalization: Normalization | None
    source: str
    split: str
    raw: Tensor | None = None
    notes: list[str] = field(default_factory=list)


def _batches(loader: Any) -> Iterator[tuple[Tensor, Tensor]]:
    for batch in loader:
        if isinstance(batch, Mapping):
            x, y = batch.get("x", batch.get("image")), batch.get("y", batch.get("label"))
        elif isinstance(batch, Sequence) and len(batch) >= 2:
            x, y = batch[0], batch[1]
        else:
            raise ValueError(
                f"the data module's loader yields {type(batch).__name__} batches; advtrain-eval "
                "needs (inputs, labels) pairs (or dicts with x/y or image/label)"
            )
        if not isinstance(x, Tensor) or not isinstance(y, Tensor):
            raise ValueError("the data module's batches must hold tensors (inputs, labels)")
        yield x, y


def _loader(datamodule: Any, split: str) -> Any:
    if split not in SPLITS:
        raise ValueError(f"data.split must be one of {list(SPLITS)}, got {split!r}")
    name = f"{split}_dataloader"
    method = getattr(datamodule, name, None)
    if not callable(method):
        raise ValueError(
            f"the data module {type(datamodule).__name__} has no {name}(); choose another split "
            f"with data.split= (one of {list(SPLITS)})"
        )
    if callable(getattr(datamodule, "prepare_data", None)):
        datamodule.prepare_data()
    if callable(getattr(datamodule, "setup", None)):
        datamodule.setup(_STAGES[split])
    try:
        return method()
    except Exception as err:  # Lightning's base class raises for a loader it does not define
        raise ValueError(
            f"the data module {type(datamodule).__name__} has no {split} split ({name}() "
            f"raised {type(err).__name__}: {err}); choose another with data.split="
        ) from None


def collect(loader: Any, limit: int | None) -> tuple[Tensor, Tensor]:
    """The first ``limit`` examples (all for ``None``) a loader yields, stacked."""
    xs, ys, n = [], [], 0
    for x, y in _batches(loader):
        take = x.shape[0] if limit is None else min(x.shape[0], limit - n)
        xs.append(x[:take].detach().cpu())
        ys.append(y[:take].detach().cpu().long())
        n += take
        if limit is not None and n >= limit:
            break
    if not xs:
        raise ValueError("the evaluated split is empty")
    return torch.cat(xs), torch.cat(ys)


def load_split(
    datamodule: Any,
    split: str,
    limit: int | None,
    bounds: Sequence[float],
    normalization: Any = AUTO,
) -> EvalData:
    """The examples to evaluate, in pixel units; see the module docstring.

    Raises:
        ValueError: For a missing split, batches that are not (inputs, labels), or inputs
            outside ``bounds`` after un-normalising (with what to declare).
    """
    if hasattr(datamodule, "test_tensors") and split == "test":  # advtrain's own data modules
        x, y = datamodule.test_tensors(limit)
        return EvalData(x, y, None, "advtrain", split, raw=x)
    loader = _loader(datamodule, split)
    raw, y = collect(loader, limit)
    requested = parse_normalization(normalization)
    norm = (
        requested
        if requested != AUTO
        else find_normalization(
            [(getattr(loader, "dataset", None), f"{split}_dataloader.dataset")],
            [(datamodule, "data.module")],
        )
    )
    x = raw if norm is None else norm.to_pixels(raw)
    low, high = float(bounds[0]), float(bounds[1])
    lo, hi = float(x.min()), float(x.max())
    if lo < low - 1e-5 or hi > high + 1e-5:
        hint = looks_normalised(raw) if norm is None else None
        raise ValueError(
            f"the {split} inputs lie in [{lo:.4g}, {hi:.4g}], outside the pixel box "
            f"data.bounds=[{low}, {high}]"
            + (
                f" after un-normalising with mean {list(norm.mean)}, std {list(norm.std)} "
                f"({norm.source}): that normalisation does not match the data"
                if norm is not None
                else (f" and look normalised ({hint})" if hint else "")
            )
            + ". Set data.normalization=[[mean...],[std...]] to what the transform applies "
            "(or null for pixels), or data.bounds to the pixel range of the data"
        )
    return EvalData(x, y, norm, "data module", split, raw=raw)


def _digests(x: Tensor) -> list[str]:
    flat = x.detach().cpu().contiguous().reshape(x.shape[0], -1)
    data = flat.numpy()
    return [hashlib.sha256(row.tobytes()).hexdigest() for row in data]


def contamination(data: EvalData, datamodule: Any, max_train: int | None = None) -> dict[str, Any]:
    """How many evaluated examples also occur in the training split (exact input match).

    Returns:
        ``{"checked": bool, "overlap": int, "n": int, "train_examples": int, "note": str}``;
        ``checked`` is false where the data module has no training split to compare with.
    """
    n = int(data.y.numel())
    if data.split == "train":
        return {
            "checked": False,
            "overlap": 0,
            "n": n,
            "train_examples": 0,
            "note": "the training split itself is evaluated",
        }
    try:
        if data.source == "advtrain" and getattr(datamodule, "train_set", None) is not None:
            train_x = datamodule.train_set.tensors[0]  # type: ignore[union-attr]
        else:
            train_x, _ = collect(_loader(datamodule, "train"), max_train)
    except (ValueError, AttributeError, TypeError, IndexError) as err:
        return {
            "checked": False,
            "overlap": 0,
            "n": n,
            "train_examples": 0,
            "note": f"no training split to compare with ({err})",
        }
    raw = data.raw if data.raw is not None else data.x
    seen = set(_digests(train_x))
    overlap = sum(d in seen for d in _digests(raw))
    note = ""
    transform = str(getattr(getattr(datamodule, "transforms", None), "transforms", ""))
    if "Random" in transform:
        note = "the training transform is random: exact matching can miss duplicates"
    return {
        "checked": True,
        "overlap": int(overlap),
        "n": n,
        "train_examples": int(train_x.shape[0]),
        "note": note,
    }


__all__ = ["SPLITS", "EvalData", "collect", "contamination", "load_split"]
