"""advtrain.checkpoints: weights-only loading, layouts, prefixes, mismatch messages."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch
from torch import nn

from advtrain.checkpoints import (
    CheckpointError,
    CheckpointMismatchError,
    UnsafeCheckpointError,
    load_weights,
    match_state_dict,
    read_checkpoint,
)


def _net(width: int = 4) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, width), nn.ReLU(), nn.Linear(width, 2))


@pytest.mark.parametrize(
    ("wrap", "fmt", "prefix"),
    [
        (lambda sd: sd, "state_dict", ""),
        (lambda sd: {"model_state_dict": sd, "epoch": 3}, "wrapped:model_state_dict", ""),
        (
            lambda sd: {"state_dict": {f"model.{k}": v for k, v in sd.items()}, "epoch": 1},
            "lightning",
            "model.",
        ),
        (
            lambda sd: {f"module._orig_mod.{k}": v for k, v in sd.items()},
            "state_dict",
            "module._orig_mod.",
        ),
    ],
)
def test_layouts_and_prefixes(tmp_path: Path, wrap, fmt: str, prefix: str) -> None:
    src = _net()
    path = tmp_path / "w.pt"
    torch.save(wrap(src.state_dict()), path)
    dst = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    ckpt = load_weights(dst, path)
    assert (ckpt.format, ckpt.prefix, ckpt.loaded_with) == (fmt, prefix, "weights_only")
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v)


def test_mismatch_names_missing_unexpected_and_shapes() -> None:
    state = _net(4).state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["2.bias"]
    with pytest.raises(CheckpointMismatchError) as exc:
        match_state_dict(_net(5), state, "checkpoint 'w.pt'")
    err = exc.value
    assert err.missing == ["2.bias"] and err.unexpected == ["extra.weight"]
    assert ("0.weight", (4, 3), (5, 3)) in err.mismatched
    msg = str(err)
    assert "1 missing key(s): 2.bias" in msg and "1 unexpected key(s): extra.weight" in msg
    assert "0.weight (checkpoint [4, 3] vs model [5, 3])" in msg


def test_pickled_hyperparameters_are_skipped_and_listed(tmp_path: Path) -> None:
    """Objects beyond tensors next to the weights (pickled hyper-parameters) no longer force
    trust_checkpoint=true: they are skipped, never unpickled, and named (issue 19)."""
    path = tmp_path / "pickled.pt"
    torch.save({"state_dict": _net().state_dict(), "args": argparse.Namespace(lr=0.1)}, path)
    ckpt = read_checkpoint(path)
    assert ckpt.loaded_with == "weights_only+skipped" and ckpt.format == "wrapped:state_dict"
    assert ckpt.extra["skipped"] == ["argparse.Namespace"]
    for k, v in _net().state_dict().items():
        assert torch.equal(ckpt.state_dict[k], v)
    with pytest.warns(UserWarning, match="UNSAFE LOAD"):
        trusted = read_checkpoint(path, trust=True)
    assert trusted.loaded_with == "trusted_pickle"


def test_weights_inside_pickled_objects_still_need_trust(tmp_path: Path) -> None:
    path = tmp_path / "module.pt"
    torch.save({"model": _net()}, path)  # the whole module pickled: no tensors without code
    with pytest.raises(UnsafeCheckpointError, match="trust_checkpoint=true") as exc:
        read_checkpoint(path)
    assert "inside pickled objects" in str(exc.value)


def test_unreadable_or_weightless_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "none.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match=r"not a torch\.save file") as exc:
        read_checkpoint(bad)
    assert not isinstance(exc.value, UnsafeCheckpointError)
    with pytest.warns(UserWarning), pytest.raises(CheckpointError, match="not a readable"):
        read_checkpoint(bad, trust=True)
    empty = tmp_path / "opt.pt"
    torch.save({"optimizer": {"lr": 0.1}}, empty)
    with pytest.raises(CheckpointError, match="without model weights"):
        read_checkpoint(empty)
