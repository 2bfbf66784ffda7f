"""Data provenance: one SHA-256 per training example, a Merkle root, and what changed between two.

A manifest names exactly which data trained a model: for every example of a dataset, in index
order, the SHA-256 of its input and label in the canonical tensor encoding of
:func:`advtrain.data.tensors_sha256` (dtype, shape, little-endian bytes; the label as an int64
scalar), plus the dataset's size, its class counts and the root of a binary Merkle tree over the
example hashes (a parent is the SHA-256 of its two children's raw digests; an odd node is carried
up unchanged), so one 64-character value identifies the whole dataset and a single example can be
proved to belong to it. :func:`diff` lists the examples added, removed or changed between two
manifests, by index and hash.

Hashing streams over the dataset one example at a time (``dataset[i]``), so the data is never
held twice in memory. Pure PyTorch and the standard library; no Lightning.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from advtrain.data.base import tensors_sha256

#: The manifest format's version (bumped when the hashing or the file layout changes).
MANIFEST_VERSION = 1
HASH_METHOD = (
    "sha256 of (input tensor, label as int64 scalar) in advtrain.data.tensors_sha256's canonical "
    "encoding; Merkle root: sha256(left digest || right digest), odd node carried up"
)


class ManifestError(ValueError):
    """A manifest file that cannot be read, or two manifests that cannot be compared."""


def _label(y: Any) -> Tensor:
    """The label as an int64 scalar tensor (ints, 0-d or 1-element tensors)."""
    if isinstance(y, Tensor):
        if y.numel() != 1 or y.is_floating_point() or y.dtype == torch.bool:
            raise TypeError(
                f"labels must be integer class indices, got a tensor of dtype {y.dtype} and "
                f"shape {tuple(y.shape)}"
            )
        return y.reshape(()).to(torch.int64)
    if isinstance(y, bool) or not isinstance(y, int):
        raise TypeError(f"labels must be integer class indices, got {type(y).__name__}")
    return torch.tensor(y, dtype=torch.int64)


def example_hash(x: Tensor, y: Any) -> str:
    """The SHA-256 of one example: its input and its label (see the module docstring)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"inputs must be tensors, got {type(x).__name__}")
    return tensors_sha256(x, _label(y))


def merkle_root(hashes: Sequence[str]) -> str:
    """The Merkle root of hex digests (the SHA-256 of nothing for an empty list)."""
    level = [bytes.fromhex(h) for h in hashes]
    if not level:
        return hashlib.sha256(b"").hexdigest()
    while len(level) > 1:
        nxt = [
            hashlib.sha256(level[i] + level[i + 1]).digest() for i in range(0, len(level) - 1, 2)
        ]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0].hex()


def _split(item: Any, index: int) -> tuple[Tensor, Any]:
    if isinstance(item, Mapping):
        if "x" in item and "y" in item:
            return item["x"], item["y"]
        raise TypeError(f"example {index}: a dict example needs keys 'x' and 'y', got {list(item)}")
    if isinstance(item, (tuple, list)) and len(item) >= 2:
        return item[0], item[1]
    raise TypeError(
        f"example {index}: expected (input, label) or {{'x', 'y'}}, got {type(item).__name__}"
    )


@dataclass
class Manifest:
    """The provenance of a dataset.

    Attributes:
        hashes: One SHA-256 per example, in index order.
        class_counts: Label → number of examples.
        name: What the data is (e.g. the data config's name), for the reader.
    """

    hashes: list[str]
    class_counts: dict[int, int] = field(default_factory=dict)
    name: str = ""

    @property
    def size(self) -> int:
        """The number of examples."""
        return len(self.hashes)

    @property
    def root(self) -> str:
        """The Merkle root of :attr:`hashes`."""
        return merkle_root(self.hashes)

    def summary(self) -> dict[str, Any]:
        """What a checkpoint, a report or a ledger entry records: name, size, class counts, root."""
        return {
            "name": self.name,
            "size": self.size,
            "class_counts": {str(k): v for k, v in sorted(self.class_counts.items())},
            "merkle_root": self.root,
            "hash_method": HASH_METHOD,
        }

    def to_dict(self) -> dict[str, Any]:
        """The manifest file's content."""
        return {"version": MANIFEST_VERSION, **self.summary(), "examples": list(self.hashes)}

    def save(self, path: str | Path) -> Path:
        """Writes the manifest as JSON (one file; about 70 bytes per example)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> Manifest:
        """Reads a manifest file and checks that its root matches its hashes.

        Raises:
            ManifestError: For a file that is not a manifest, of another version, or whose
                recorded root or size does not match its example hashes (edited by hand).
        """
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ManifestError(f"cannot read the manifest {path}: {err}") from None
        if not isinstance(data, dict) or not isinstance(data.get("examples"), list):
            raise ManifestError(f"{path} is not an advtrain data manifest (no 'examples' list)")
        if data.get("version") != MANIFEST_VERSION:
            raise ManifestError(
                f"{path} is a manifest of version {data.get('version')!r}; this advtrain reads "
                f"version {MANIFEST_VERSION}"
            )
        counts = {int(k): int(v) for k, v in (data.get("class_counts") or {}).items()}
        manifest = cls([str(h) for h in data["examples"]], counts, str(data.get("name", "")))
        if data.get("size") != manifest.size or data.get("merkle_root") != manifest.root:
            raise ManifestError(
                f"{path}: the recorded size/root do not match its example hashes (the file was "
                "edited); recompute it from the data"
            )
        return manifest


def manifest_of(dataset: Any, name: str = "") -> Manifest:
    """The manifest of a map-style dataset (``len`` and ``dataset[i] -> (x, y)``), streamed one
    example at a time (a ``torch.utils.data.Subset`` from ``random_split`` works as it is).

    Raises:
        TypeError: For a dataset without ``len``/indexing or examples that are not
            ``(tensor, integer label)``.
    """
    if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
        raise TypeError(
            f"data provenance needs a map-style dataset (len and dataset[i]), got "
            f"{type(dataset).__name__}"
        )
    hashes: list[str] = []
    counts: Counter[int] = Counter()
    for i in range(len(dataset)):
        x, y = _split(dataset[i], i)
        if not isinstance(x, Tensor):
            raise TypeError(
                f"example {i}: the input must be a tensor (apply the transforms that make one), "
                f"got {type(x).__name__}"
            )
        label = _label(y)
        hashes.append(tensors_sha256(x, label))
        counts[int(label)] += 1
    return Manifest(hashes, dict(counts), name)


@dataclass
class Difference:
    """What changed from one manifest (``before``) to another (``after``).

    Attributes:
        changed: ``(index, hash before, hash after)`` where both have an example at ``index``
            (same size) and the hashes differ.
        removed: ``(index in before, hash)`` of examples ``after`` does not have.
        added: ``(index in after, hash)`` of examples ``before`` does not have.
    """

    changed: list[tuple[int, str, str]] = field(default_factory=list)
    removed: list[tuple[int, str]] = field(default_factory=list)
    added: list[tuple[int, str]] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        """Nothing changed."""
        return not (self.changed or self.removed or self.added)

    @property
    def count(self) -> int:
        """How many examples differ."""
        return len(self.changed) + len(self.removed) + len(self.added)


def _unmatched(hashes: Sequence[str], other: Counter[str]) -> Iterable[tuple[int, str]]:
    left = Counter(other)
    for i, h in enumerate(hashes):
        if left[h] > 0:
            left[h] -= 1
        else:
            yield i, h


def diff(before: Manifest, after: Manifest) -> Difference:
    """The examples added, removed or changed from ``before`` to ``after``.

    Same size: compared index by index (a changed pixel or label shows as ``changed`` at its
    index), unless the two are the same examples reordered (then nothing is reported as changed:
    compare the roots for the order). Different sizes: the examples of each that the other lacks
    (as multisets of hashes), with their indices.
    """
    out = Difference()
    if before.size == after.size:
        if Counter(before.hashes) == Counter(after.hashes):
            return out
        out.changed = [
            (i, a, b)
            for i, (a, b) in enumerate(zip(before.hashes, after.hashes, strict=True))
            if a != b
        ]
        return out
    out.removed = list(_unmatched(before.hashes, Counter(after.hashes)))
    out.added = list(_unmatched(after.hashes, Counter(before.hashes)))
    return out


__all__ = [
    "HASH_METHOD",
    "MANIFEST_VERSION",
    "Difference",
    "Manifest",
    "ManifestError",
    "diff",
    "example_hash",
    "manifest_of",
    "merkle_root",
]
