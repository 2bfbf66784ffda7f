"""Data provenance (advtrain.provenance): per-example hashes, the Merkle root, and diffs."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset, TensorDataset, random_split

from advtrain.data import tensors_sha256
from advtrain.provenance import (
    Manifest,
    ManifestError,
    diff,
    example_hash,
    manifest_of,
    merkle_root,
)


def _data(n: int = 30) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, 4, 4, generator=gen), torch.randint(0, 3, (n,), generator=gen)


def test_an_example_hash_is_the_canonical_encoding_of_input_and_label() -> None:
    x, y = _data(1)
    expected = tensors_sha256(x[0], torch.tensor(int(y[0]), dtype=torch.int64))
    assert example_hash(x[0], y[0]) == expected == example_hash(x[0], int(y[0]))
    assert example_hash(x[0], int(y[0]) + 1) != expected


def test_the_merkle_root_matches_a_hand_computation() -> None:
    leaves = [hashlib.sha256(bytes([i])).hexdigest() for i in range(3)]
    raw = [bytes.fromhex(h) for h in leaves]
    left = hashlib.sha256(raw[0] + raw[1]).digest()
    expected = hashlib.sha256(left + raw[2]).hexdigest()  # the odd leaf is carried up
    assert merkle_root(leaves) == expected
    assert merkle_root(leaves[:1]) == leaves[0]
    assert merkle_root([]) == hashlib.sha256(b"").hexdigest()


def test_one_flipped_pixel_one_relabel_and_one_dropped_example_are_located() -> None:
    x, y = _data()
    before = manifest_of(TensorDataset(x, y), name="toy")
    assert before.size == 30 and sum(before.class_counts.values()) == 30
    assert diff(before, manifest_of(TensorDataset(x.clone(), y.clone()))).identical

    x2 = x.clone()
    x2[7, 0, 2, 3] = 1.0 - x2[7, 0, 2, 3]
    y2 = y.clone()
    y2[12] = (y2[12] + 1) % 3
    changed = diff(before, manifest_of(TensorDataset(x2, y2)))
    assert [c[0] for c in changed.changed] == [7, 12] and changed.count == 2
    assert changed.changed[0][1] == before.hashes[7]

    keep = [i for i in range(30) if i != 19]
    dropped = diff(before, manifest_of(TensorDataset(x[keep], y[keep])))
    assert dropped.removed == [(19, before.hashes[19])] and not dropped.added

    grown = diff(
        before, manifest_of(TensorDataset(torch.cat([x, x2[7:8]]), torch.cat([y, y[7:8]])))
    )
    assert grown.added == [(30, example_hash(x2[7], y[7]))] and not grown.removed
    assert before.root != manifest_of(TensorDataset(x2, y2)).root


def test_a_random_split_subset_and_dict_examples_stream_as_they_are() -> None:
    x, y = _data()
    train, _ = random_split(
        TensorDataset(x, y), [20, 10], generator=torch.Generator().manual_seed(0)
    )
    manifest = manifest_of(train)
    assert manifest.hashes == [example_hash(x[i], y[i]) for i in train.indices]

    class Dicts(Dataset):
        def __len__(self) -> int:
            return 30

        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            return {"x": x[i], "y": y[i]}

    assert manifest_of(Dicts()).root == manifest_of(TensorDataset(x, y)).root


def test_a_manifest_file_round_trips_and_an_edited_one_is_refused(tmp_path: Path) -> None:
    x, y = _data()
    manifest = manifest_of(TensorDataset(x, y), name="toy")
    path = manifest.save(tmp_path / "manifest.json")
    loaded = Manifest.load(path)
    assert loaded.hashes == manifest.hashes and loaded.root == manifest.root
    assert loaded.class_counts == manifest.class_counts and loaded.name == "toy"
    data = json.loads(path.read_text())
    data["examples"][3] = "0" * 64
    path.write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="edited"):
        Manifest.load(path)
    data["version"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="version"):
        Manifest.load(path)
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(ManifestError, match="not an advtrain data manifest"):
        Manifest.load(tmp_path / "other.json")


def test_bad_examples_get_a_clear_error() -> None:
    x, y = _data(2)
    with pytest.raises(TypeError, match="integer class"):
        example_hash(x[0], 0.5)
    with pytest.raises(TypeError, match="must be a tensor"):
        manifest_of([("not a tensor", 1)])
    with pytest.raises(TypeError, match="map-style"):
        manifest_of(iter([(x[0], 1)]))
    with pytest.raises(TypeError, match="integer class"):
        manifest_of(TensorDataset(x, y.float()))
