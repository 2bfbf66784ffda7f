"""Normalised data with eps in pixel units: the normalisation, where to find it, the pixel view.

Most image pipelines normalise in the dataset transform (torchvision's
``Compose([ToTensor(), Normalize(mean, std)])``), so the tensors a model sees are
``(pixels - mean) / std`` per channel. A threat model is stated in pixels (``eps = 8/255`` is
eight grey levels of an image in ``[0, 1]``); an attack run directly on normalised tensors with
the same number would move each channel by ``eps · std`` pixels (about a quarter of the stated
radius on CIFAR-10) and overstate robustness several-fold. advtrain therefore undoes the
normalisation before attacking (``x · std + mean``, back in the pixel box ``bounds``), attacks a
view of the model that normalises its pixel inputs, and hands normalised adversarial inputs back
to the user's code.

:class:`Normalization` is that map; :func:`find_normalization` finds it in a data pipeline without
importing torchvision (any transform whose class is called ``Normalize`` with ``mean`` and ``std``,
inside ``Compose``-like containers with a ``transforms`` list, ``nn.Sequential``, a dataset's
``transform``/``transforms``, and ``Subset`` / ``random_split`` / ``ConcatDataset`` wrappers).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

#: Spellings of "find it in the data" and "the data is in pixels".
AUTO, NONE = "auto", "none"


def _floats(value: Any, name: str) -> tuple[float, ...]:
    if isinstance(value, Tensor):
        value = value.detach().flatten().tolist()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value]
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise TypeError(
            f"normalization {name} must be a number or a sequence of numbers, got {value!r}"
        )
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TypeError(f"normalization {name} must hold numbers, got {v!r} in {value!r}")
        out.append(float(v))
    if not out:
        raise ValueError(f"normalization {name} is empty")
    if not all(math.isfinite(v) for v in out):
        raise ValueError(f"normalization {name} must be finite, got {out}")
    return tuple(out)


@dataclass(frozen=True)
class Normalization:
    """``normalised = (pixels - mean) / std`` per channel, as torchvision's ``Normalize``.

    Args:
        mean: Per-channel means (one value for every channel, or one per channel).
        std: Per-channel standard deviations, all ``> 0``; same length as ``mean`` or length 1.
        source: Where it came from (``"declared"``, or the path it was found at), for logs and
            reports.

    Raises:
        TypeError: If ``mean``/``std`` are not numbers.
        ValueError: For empty, non-finite or mismatched values, or a ``std`` that is not ``> 0``.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str = field(default="declared", compare=False)

    def __post_init__(self) -> None:
        mean, std = _floats(self.mean, "mean"), _floats(self.std, "std")
        if len(mean) != len(std) and 1 not in (len(mean), len(std)):
            raise ValueError(
                f"normalization mean has {len(mean)} values and std {len(std)}: give one value "
                "per channel for both (or a single value for every channel)"
            )
        if not all(s > 0 for s in std):
            raise ValueError(f"normalization std must be > 0 for every channel, got {list(std)}")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)
        self._cache: dict[tuple[torch.device, torch.dtype, int], tuple[Tensor, Tensor]]
        object.__setattr__(self, "_cache", {})

    @property
    def channels(self) -> int:
        """Number of channels described (1 means: the same for every channel)."""
        return max(len(self.mean), len(self.std))

    def check(self, x: Tensor) -> None:
        """Raises unless ``x`` (a batch, channels at dim 1) has channels this map describes.

        Raises:
            ValueError: For a channel count that differs from the normalisation's.
        """
        if self.channels == 1:
            return
        if x.dim() < 2 or x.shape[1] != self.channels:
            raise ValueError(
                f"normalization has {self.channels} channels (mean {list(self.mean)}, std "
                f"{list(self.std)}) but the inputs have shape {tuple(x.shape)} (channels at "
                "dim 1): give one mean and std per channel of the inputs"
            )

    def _stats(self, x: Tensor) -> tuple[Tensor, Tensor]:
        key = (x.device, x.dtype, x.dim())
        stats = self._cache.get(key)
        if stats is None:
            shape = (1, -1, *([1] * (x.dim() - 2))) if x.dim() >= 2 else (-1,)
            mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(shape)
            std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(shape)
            stats = (mean, std)
            self._cache[key] = stats
        return stats

    def to_pixels(self, x: Tensor) -> Tensor:
        """``x · std + mean``: normalised inputs back in pixel units (a new tensor)."""
        mean, std = self._stats(x)
        return torch.addcmul(mean, x, std)

    def normalize(self, x: Tensor) -> Tensor:
        """``(x - mean) / std``: pixel inputs normalised as the data pipeline does."""
        mean, std = self._stats(x)
        return (x - mean) / std

    def as_dict(self) -> dict[str, Any]:
        """``{"mean": [...], "std": [...], "source": ...}`` for logs, checkpoints and reports."""
        return {"mean": list(self.mean), "std": list(self.std), "source": self.source}

    def __repr__(self) -> str:
        mean, std = list(self.mean), list(self.std)
        return f"Normalization(mean={mean}, std={std}, source={self.source!r})"


def compose(first: Normalization, second: Normalization) -> Normalization:
    """The single normalisation equal to ``first`` followed by ``second``."""
    n = max(first.channels, second.channels)

    def expand(values: tuple[float, ...]) -> list[float]:
        return list(values) * n if len(values) == 1 else list(values)

    m1, s1, m2, s2 = (expand(v) for v in (first.mean, first.std, second.mean, second.std))
    if len(m1) != len(m2):
        raise ValueError(
            f"two Normalize transforms with different channel counts: {first} then {second}"
        )
    # ((x - m1)/s1 - m2)/s2 = (x - (m1 + m2·s1)) / (s1·s2)
    mean = [a + b * c for a, b, c in zip(m1, m2, s1, strict=True)]
    std = [a * b for a, b in zip(s1, s2, strict=True)]
    return Normalization(mean, std, source=f"{first.source} + {second.source}")


def parse_normalization(value: Any) -> Normalization | str | None:
    """A callback's ``normalization`` argument: ``"auto"`` (find it in the data), ``None`` or
    ``"none"`` (inputs are pixels), a :class:`Normalization`, a ``(mean, std)`` pair or a
    ``{"mean": ..., "std": ...}`` mapping.

    Returns:
        ``"auto"``, ``None`` or a :class:`Normalization`.

    Raises:
        TypeError: For anything else.
        ValueError: For invalid values (see :class:`Normalization`).
    """
    if value is None or isinstance(value, Normalization):
        return value
    if isinstance(value, str):
        key = value.strip().lower()
        if key == AUTO:
            return AUTO
        if key == NONE:
            return None
        raise ValueError(
            f"normalization must be 'auto', 'none', (mean, std) or {{mean: ..., std: ...}}, "
            f"got {value!r}"
        )
    if isinstance(value, Mapping):
        if set(value) - {"mean", "std"} or not {"mean", "std"} <= set(value):
            raise ValueError(
                f"a normalization mapping needs exactly the keys 'mean' and 'std', got "
                f"{sorted(map(str, value))}"
            )
        return Normalization(value["mean"], value["std"])
    if isinstance(value, Sequence) and len(value) == 2:
        return Normalization(value[0], value[1])
    raise TypeError(
        f"normalization must be 'auto', 'none', (mean, std) or {{mean: ..., std: ...}}, got "
        f"{type(value).__name__}: {value!r}"
    )


# -- finding it ------------------------------------------------------------------------------------
def _in_transform(transform: Any, path: str, depth: int) -> list[Normalization]:
    """The Normalize maps of a transform pipeline, in application order."""
    if transform is None or depth > 8:
        return []
    if type(transform).__name__ == "Normalize" and hasattr(transform, "mean"):
        std = getattr(transform, "std", None)
        if std is not None:
            return [Normalization(transform.mean, std, source=path)]
    found: list[Normalization] = []
    inner = getattr(transform, "transforms", None)
    if isinstance(inner, (list, tuple)):
        for i, t in enumerate(inner):
            found += _in_transform(t, f"{path}.transforms[{i}]", depth + 1)
        return found
    if isinstance(transform, torch.nn.Sequential):
        for i, t in enumerate(transform):
            found += _in_transform(t, f"{path}[{i}]", depth + 1)
        return found
    # torchvision datasets wrap their transform in a StandardTransform(transform, ...)
    inner_one = getattr(transform, "transform", None)
    if inner_one is not None and inner_one is not transform:
        return _in_transform(inner_one, f"{path}.transform", depth + 1)
    return found


def _combine(found: list[Normalization]) -> Normalization | None:
    if not found:
        return None
    out = found[0]
    for more in found[1:]:
        out = compose(out, more)
    return out


def in_dataset(dataset: Any, path: str = "dataset", depth: int = 0) -> Normalization | None:
    """The normalisation a dataset's transforms apply (through ``Subset``, ``random_split``,
    ``ConcatDataset`` and other wrappers with a ``dataset``/``datasets`` attribute).

    Raises:
        ValueError: If the datasets of a ``ConcatDataset`` normalise differently.
    """
    if dataset is None or depth > 8:
        return None
    for attr in ("transform", "transforms"):
        transform = getattr(dataset, attr, None)
        if transform is not None and not isinstance(transform, (str, bytes)):
            found = _combine(_in_transform(transform, f"{path}.{attr}", depth))
            if found is not None:
                return found
    parts = getattr(dataset, "datasets", None)
    if isinstance(parts, (list, tuple)) and parts:
        each = [in_dataset(d, f"{path}.datasets[{i}]", depth + 1) for i, d in enumerate(parts)]
        distinct = {(n.mean, n.std) if n is not None else None for n in each}
        if len(distinct) > 1:
            raise ValueError(
                f"the datasets concatenated at {path} normalise differently "
                f"({[n.as_dict() if n else None for n in each]}): declare normalization="
                "(mean, std) explicitly"
            )
        return each[0]
    inner = getattr(dataset, "dataset", None)
    if inner is not None and inner is not dataset:
        return in_dataset(inner, f"{path}.dataset", depth + 1)
    return None


def in_attributes(obj: Any, path: str) -> Normalization | None:
    """The normalisation held by an object's transform attributes (any attribute whose name
    contains ``transform``, e.g. a data module's ``self.transforms = Compose([...])``)."""
    if obj is None:
        return None
    for name, value in sorted(vars(obj).items()) if hasattr(obj, "__dict__") else []:
        if "transform" not in name.lower() or value is None:
            continue
        found = _combine(_in_transform(value, f"{path}.{name}", 0))
        if found is not None:
            return found
    return None


def find_normalization(
    datasets: Sequence[tuple[Any, str]] = (), holders: Sequence[tuple[Any, str]] = ()
) -> Normalization | None:
    """The first normalisation found in ``datasets`` (what a loader applies), else in the
    transform attributes of ``holders`` (e.g. the data module), else ``None``.

    Args:
        datasets: ``(dataset, name)`` pairs, searched first.
        holders: ``(object, name)`` pairs whose ``*transform*`` attributes are searched next.
    """
    for dataset, name in datasets:
        found = in_dataset(dataset, name)
        if found is not None:
            return found
    for obj, name in holders:
        found = in_attributes(obj, name)
        if found is not None:
            return found
    return None


def looks_normalised(x: Tensor) -> str | None:
    """A short reason when a batch looks normalised rather than in pixels (negative values, or
    per-channel means near 0 with spreads near 1), else ``None``."""
    x = x.detach().float()
    reasons = []
    if x.dim() >= 2 and x.shape[0] > 0:
        dims = [0, *range(2, x.dim())]
        means = x.mean(dim=dims) if x.dim() > 2 else x.mean(dim=0)
        if x.dim() > 2 and bool((means.abs() < 0.5).all()):
            reasons.append(f"per-channel means {[round(float(m), 3) for m in means[:4]]}")
    if float(x.min()) < 0:
        reasons.append(f"negative values (min {float(x.min()):.3g})")
    return " and ".join(reasons) or None


__all__ = [
    "AUTO",
    "NONE",
    "Normalization",
    "compose",
    "find_normalization",
    "in_attributes",
    "in_dataset",
    "looks_normalised",
    "parse_normalization",
]
