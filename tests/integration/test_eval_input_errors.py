"""advtrain-eval on bad input: one clear message each (the red team's list), and a disabled
sanity check reported as "not checked", never as "trustworthy"."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import pytest
import torch

from advtrain.attacks import APGD, PGD, AutoAttack, Square
from advtrain.checkpoints import CheckpointError
from advtrain.cli import evaluate as evaluate_module
from advtrain.cli.config import compose
from advtrain.cli.evaluate import main, run
from advtrain.models import SmallCNN

from .test_evidence_integrity import EVAL, evaluate
from .test_hostile_run_dir import run_folder


def eval_cfg(tmp_path: Path, *extra: str) -> Any:
    return compose(
        "eval",
        [f"run_dir={run_folder(tmp_path)}", *EVAL, "ledger=null", *extra],
        str(tmp_path / "eval"),
    )


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda p: p, "is a folder, not a checkpoint file"),
        (
            lambda p: (p / "notes.txt", (p / "notes.txt").write_text("hello\n"))[0],
            "not a readable torch checkpoint",
        ),
    ],
)
def test_a_ckpt_path_that_is_no_checkpoint(tmp_path: Path, make: Any, match: str) -> None:
    with pytest.raises(CheckpointError, match=match):
        run(eval_cfg(tmp_path, f"ckpt_path={make(tmp_path)}"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a build without CUDA")
def test_device_cuda_without_cuda(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"no usable CUDA device.*device=cpu"):
        run(eval_cfg(tmp_path, "device=cuda"))


def test_eps_grid_factors_must_be_finite_and_non_negative(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"eps_grid.factors must be finite numbers >= 0"):
        run(eval_cfg(tmp_path, "eps_grid.factors=[-1,nan]"))


def test_sanity_checks_off_is_not_trustworthy(tmp_path: Path) -> None:
    report = run(eval_cfg(tmp_path, "sanity.enabled=false"))
    assert report["sanity"]["white_box_trustworthy"] is None
    assert "were not run" in report["sanity"]["warning"]
    md = Path(report["report_dir"], "report.md").read_text()
    assert "Sanity checks not run" in md


def test_a_full_disk_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def full(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x" / "report.json"))

    monkeypatch.setattr(evaluate_module, "write_report", full)
    run_dir = run_folder(tmp_path)
    with pytest.raises(SystemExit) as code:
        main([f"run_dir={run_dir}", *EVAL, "ledger=null", f"output_dir={tmp_path / 'o'}"])
    assert code.value.code == 2
    err = capsys.readouterr().err
    assert "advtrain-eval: error: could not write" in err and "No space left" in err
    assert "rerun the same command to resume" in err


def test_attacks_take_int32_labels_and_explain_a_dtype_mismatch() -> None:
    torch.manual_seed(0)
    model = SmallCNN(width=4, hidden=8).eval()
    x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    for attack in (
        PGD(eps=0.1, steps=2),
        APGD(eps=0.1, steps=2),
        Square(eps=0.1, n_queries=5),
        AutoAttack(eps=0.1, version="fast"),
    ):
        out = attack(model, x, y.int())
        assert out.shape == x.shape
        with pytest.raises(TypeError, match=r"inputs are torch.float64 but the model's"):
            attack(model, x.double(), y)


def test_an_evaluation_into_a_finished_folder_keeps_the_first_report(tmp_path: Path) -> None:
    run_dir = run_folder(tmp_path)
    first = evaluate(run_dir, tmp_path / "e", tmp_path / "ledger.jsonl")
    before = Path(first["report_dir"], "report.json").read_bytes()
    evaluate(
        run_dir,
        tmp_path / "e",
        tmp_path / "ledger.jsonl",
        "attacks.pgd-50x5.steps=3",
        "resume=false",
    )
    assert Path(first["report_dir"], "report.json").read_bytes() == before
