"""advtrain-train on bad input: every case the red team met gets a one-line message, not a
Lightning traceback (ckpt_path of every wrong kind, a non-integer seed), and an untrained model's
report says so."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from advtrain.checkpoints import CheckpointError, CheckpointMismatchError, UnsafeCheckpointError
from advtrain.cli.config import compose
from advtrain.cli.schemas import ConfigError
from advtrain.cli.train import run

from .conftest import TINY


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny advtrain-train run (its last.ckpt and model.pt are resumed from below)."""
    out = tmp_path_factory.mktemp("run")
    run(compose(overrides=TINY, output_dir=str(out)))
    return out


class Payload:
    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, ("true",))


def bad_checkpoints(tmp_path: Path, finished_run: Path) -> dict[str, tuple[Path, type, str]]:
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint\n")
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes((finished_run / "checkpoints" / "last.ckpt").read_bytes()[:4096])
    hostile = tmp_path / "hostile.ckpt"
    torch.save({"state_dict": {}, "pytorch-lightning_version": "2.6", "x": Payload()}, hostile)
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps({"a": 1}, protocol=4))
    return {
        "a text file": (text, CheckpointError, "not a readable torch checkpoint"),
        "a folder": (finished_run, CheckpointError, "is a folder, not a checkpoint file"),
        "a truncated file": (truncated, CheckpointError, "truncated"),
        "model.pt": (finished_run / "model.pt", CheckpointError, "only model weights"),
        "a malicious file": (hostile, UnsafeCheckpointError, "posix.system"),
        "a missing file": (tmp_path / "nope.ckpt", CheckpointError, "does not exist"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "a text file",
        "a folder",
        "a truncated file",
        "model.pt",
        "a malicious file",
        "a missing file",
    ],
)
def test_a_bad_ckpt_path_is_a_clear_error(case: str, finished_run: Path, tmp_path: Path) -> None:
    path, error, match = bad_checkpoints(tmp_path, finished_run)[case]
    cfg = compose(overrides=[*TINY, f"ckpt_path={path}"], output_dir=str(tmp_path / "resume"))
    with pytest.raises(error, match=match):
        run(cfg)


def test_a_checkpoint_of_another_architecture_names_the_keys(
    finished_run: Path, tmp_path: Path
) -> None:
    cfg = compose(
        overrides=[*TINY, "model.width=4", f"ckpt_path={finished_run / 'checkpoints/last.ckpt'}"],
        output_dir=str(tmp_path / "resume"),
    )
    with pytest.raises(CheckpointMismatchError, match=r"another shape: model\.") as info:
        run(cfg)
    assert "resume with the model= settings" in str(info.value)


def test_a_non_integer_seed_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="seed must be an integer"):
        run(compose(overrides=[*TINY, "seed=abc"], output_dir=str(tmp_path)))


def test_an_untrained_model_is_flagged_in_the_report(tmp_path: Path) -> None:
    report = run(compose(overrides=[*TINY, "trainer.max_epochs=0"], output_dir=str(tmp_path)))
    assert report is not None
    flags = {f["code"]: f for f in report["sanity"]["flags"]}
    assert flags["untrained_model"]["triggered"]
    assert "untrained_model" in (tmp_path / "report.md").read_text()


def test_the_console_script_prints_one_line_without_a_traceback(
    finished_run: Path, tmp_path: Path
) -> None:
    exe = Path(sys.executable).with_name("advtrain-train")
    notes = tmp_path / "notes.txt"
    notes.write_text("hello\n")
    proc = subprocess.run(
        [str(exe), *TINY, f"ckpt_path={notes}", f"hydra.run.dir={tmp_path / 'r'}"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert proc.returncode == 2
    assert "advtrain-train: error: ckpt_path" in proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
