"""advtrain-train end to end: Hydra composition, training, evaluation, report, resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from advtrain.cli.config import compose
from advtrain.cli.train import run
from advtrain.report import sha256_file

from .conftest import FAST


def test_default_config_is_pgd_at_on_digits_at_eps_0_2() -> None:
    cfg = compose(overrides=[], output_dir="unused")
    assert cfg.data.name == "digits"
    assert cfg.method.name == "pgd_at"
    assert cfg.threat.eps == 0.2 and cfg.threat.norm == "linf"
    assert cfg.attack._target_ == "advtrain.attacks.PGD" and cfg.attack.eps == 0.2
    assert cfg.schedule.eps._target_ == "advtrain.schedules.Linear"
    # The default evaluation: AutoAttack "rapid" and the FMN eps curve (issue #20); AutoAttack
    # standard with PGD-50x5 and the APGD-CE curve is evaluation=standard.
    assert set(cfg.evaluation.attacks) == {"autoattack-rapid"}
    assert cfg.evaluation.attacks["autoattack-rapid"].version == "rapid"
    assert cfg.evaluation.eps_grid.min_norm.fmn._target_ == "advtrain.attacks.FMN"
    assert cfg.evaluation.eps_grid.min_norm.fmn.eps == 0.2
    standard = compose(overrides=["evaluation=standard"], output_dir="unused")
    assert standard.evaluation.attacks["pgd-50x5"].steps == 50
    assert standard.evaluation.attacks["autoattack"].version == "standard"
    assert standard.evaluation.eps_grid.min_norm is None


def test_fraction_override_reads_naturally(tmp_path: Path) -> None:
    cfg = compose(overrides=["threat.eps=8/255"], output_dir=str(tmp_path))
    from advtrain.cli.config import coerce_fractions

    coerce_fractions(cfg)
    assert cfg.threat.eps == pytest.approx(8 / 255)
    assert cfg.attack.eps == pytest.approx(8 / 255)
    assert cfg.schedule.eps.end == pytest.approx(8 / 255)
    cfg2 = compose(overrides=["threat.eps=${div:8,255}"], output_dir=str(tmp_path))
    assert cfg2.attack.eps == pytest.approx(8 / 255)


def test_run_writes_a_complete_auditable_report(tmp_path: Path) -> None:
    report = run(compose(overrides=FAST, output_dir=str(tmp_path)))
    assert report is not None
    saved = json.loads((tmp_path / "report.json").read_text())
    for key in (
        "clean_accuracy",
        "robust_accuracy",
        "threat_model",
        "n_examples",
        "checkpoint",
        "config_sha256",
        "data_sha256",
        "timings_s",
    ):
        assert key in saved, key
    assert saved["threat_model"] == {"norm": "linf", "eps": 0.2, "bounds": [0.0, 1.0]}
    assert saved["n_examples"] == 48
    assert 0.0 <= saved["robust_accuracy"]["pgd-50x5"] <= saved["clean_accuracy"] <= 1.0
    ckpt = Path(saved["checkpoint"]["path"])
    assert saved["checkpoint"]["sha256"] == sha256_file(ckpt)
    weights = torch.load(ckpt, weights_only=True)
    assert isinstance(weights, dict) and all(isinstance(v, torch.Tensor) for v in weights.values())
    torch.load(saved["checkpoint"]["source"], weights_only=True)  # the Lightning checkpoint too
    assert (tmp_path / "checkpoints" / "last.ckpt").exists()
    # The training data's provenance: the manifest next to the checkpoints, its root in the
    # report, in the checkpoint and equal to the data module's training split's.
    from advtrain.data import DigitsDataModule
    from advtrain.provenance import Manifest, manifest_of

    manifest = Manifest.load(tmp_path / "checkpoints" / "data_manifest.json")
    assert saved["data_provenance"]["merkle_root"] == manifest.root
    assert saved["data_provenance"]["size"] == manifest.size == 1257
    dm = DigitsDataModule()
    dm.setup()
    assert manifest_of(dm.train_set).root == manifest.root
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    (prov,) = [v for k, v in state["callbacks"].items() if k.startswith("DataProvenance")]
    assert prov["merkle_root"] == manifest.root
    assert manifest.root in (tmp_path / "report.md").read_text()
    curve = saved["eps_curve"]
    assert [round(p["eps"], 6) for p in curve] == [0.0, 0.05, 0.1, 0.15, 0.2, 0.3]
    assert curve[0]["accuracy"] == pytest.approx(saved["clean_accuracy"])
    png = tmp_path / "robust_vs_eps.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    md = (tmp_path / "report.md").read_text()
    assert f"{100 * saved['clean_accuracy']:.1f}%" in md


class _StopAfter(pl.Callback):
    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path: Path) -> None:
    overrides = [*FAST, "trainer.max_epochs=4", "callbacks.robust_evaluation.every_n_epochs=2"]
    full = run(compose(overrides=overrides, output_dir=str(tmp_path / "full")))
    part_dir = tmp_path / "part"
    run(compose(overrides=overrides, output_dir=str(part_dir)), extra_callbacks=[_StopAfter(2)])
    last = part_dir / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["epoch"] == 1
    resumed = run(compose(overrides=[*overrides, f"ckpt_path={last}"], output_dir=str(part_dir)))
    assert full is not None and resumed is not None
    assert resumed["clean_accuracy"] == full["clean_accuracy"]
    assert resumed["robust_accuracy"] == full["robust_accuracy"]
    assert resumed["checkpoint"]["sha256"] == full["checkpoint"]["sha256"]


def test_a_failed_download_inside_fit_reports_only_the_data_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``prepare_data`` (where a data module downloads) runs inside ``Trainer.fit``; its
    DatasetNotFoundError reaches the user with its message and without Lightning's frames."""
    from advtrain.data import DigitsDataModule
    from advtrain.data.vision import DatasetNotFoundError

    def no_network(self: DigitsDataModule) -> None:
        raise DatasetNotFoundError("digits is missing and could not be downloaded: /x/y")

    monkeypatch.setattr(DigitsDataModule, "prepare_data", no_network)
    with pytest.raises(DatasetNotFoundError, match="could not be downloaded: /x/y") as info:
        run(compose(overrides=FAST, output_dir=str(tmp_path)))
    assert info.value.__cause__ is None and info.value.__suppress_context__
    frames = [f.filename for f in traceback.extract_tb(info.value.__traceback__)]
    assert not any("pytorch_lightning" in name for name in frames), frames


def test_console_script_runs_from_any_folder(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("advtrain-train")
    assert exe.exists(), "the console script is installed with the package"
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [str(exe), *FAST, "trainer.max_epochs=1", f"hydra.run.dir={out}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "pgd-50x5" in proc.stdout and "report" in proc.stdout
    assert (out / "report.json").exists()


def test_best_checkpoint_metric_follows_the_method() -> None:
    # Adversarial training keeps the most robust checkpoint (Rice et al. 2020); standard
    # training, whose robust accuracy is ~0 throughout, the most accurate one.
    default = compose(overrides=[], output_dir="unused")
    assert default.callbacks.model_checkpoint.monitor == "val/robust_acc"
    standard = compose(overrides=["method=standard"], output_dir="unused")
    assert standard.callbacks.model_checkpoint.monitor == "val/acc"
