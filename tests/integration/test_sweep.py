"""Multirun sweeps: one report per job and a summary (mean ± std over seeds) after the last job."""

from __future__ import annotations

import csv
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from advtrain.cli.sweep import SUMMARY_CSV, SUMMARY_MD, summarize_sweep

from .conftest import TINY


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``advtrain-train -m threat.eps=0.1,0.2,0.3 seed=0,1`` through the console script."""
    root = tmp_path_factory.mktemp("sweep")
    exe = Path(sys.executable).with_name("advtrain-train")
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            str(exe),
            "-m",
            "threat.eps=0.1,0.2,0.3",
            "seed=0,1",
            *TINY,
            f"hydra.sweep.dir={root / 'multirun'}",
        ],
        cwd=root,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Sweep summary" in proc.stdout
    return root / "multirun"


def _reports(sweep: Path) -> dict[str, dict[str, Any]]:
    return {
        d.name: json.loads((d / "report.json").read_text())
        for d in sweep.iterdir()
        if (d / "report.json").exists()
    }


def test_each_job_writes_its_report_into_its_own_folder(sweep_dir: Path) -> None:
    reports = _reports(sweep_dir)
    assert sorted(reports) == [str(i) for i in range(6)]
    combos = {(r["threat_model"]["eps"], r["seed"]) for r in reports.values()}
    assert combos == {(e, s) for e in (0.1, 0.2, 0.3) for s in (0, 1)}
    for name, report in reports.items():
        assert Path(report["checkpoint"]["path"]).parent == sweep_dir / name


def test_summary_matches_the_job_reports(sweep_dir: Path) -> None:
    rows = _csv_rows(sweep_dir / SUMMARY_CSV)
    reports = list(_reports(sweep_dir).values())
    assert [r["threat.eps"] for r in rows] == ["0.1", "0.2", "0.3"]
    for row in rows:
        jobs = [r for r in reports if r["threat_model"]["eps"] == float(row["threat.eps"])]
        assert int(row["n_jobs"]) == len(jobs) == 2
        assert sorted(map(int, row["seeds"].split())) == [0, 1]
        for metric, values in (
            ("clean", [r["clean_accuracy"] for r in jobs]),
            ("robust/pgd-50x5", [r["robust_accuracy"]["pgd-50x5"] for r in jobs]),
        ):
            assert float(row[f"{metric}_mean"]) == pytest.approx(
                statistics.fmean(values), abs=1e-12
            )
            assert float(row[f"{metric}_std"]) == pytest.approx(statistics.stdev(values), abs=1e-12)
    md = (sweep_dir / SUMMARY_MD).read_text()
    assert "| threat.eps | jobs | seeds |" in md and "±" in md
    first = [r for r in reports if r["threat_model"]["eps"] == 0.1]
    mean = statistics.fmean(r["clean_accuracy"] for r in first)
    std = statistics.stdev(r["clean_accuracy"] for r in first)
    assert f"| 0.1 | 2 | 0 1 | {100 * mean:.1f} ± {100 * std:.1f} |" in md


def test_summarize_sweep_can_be_called_directly(sweep_dir: Path, tmp_path: Path) -> None:
    again = summarize_sweep(sweep_dir, write=False)
    assert again.keys == ["threat.eps"] and len(again.groups) == 3
    assert all(g.seeds == [0, 1] for g in again.groups)


# -- summarize_sweep on hand-made job folders (no training) ----------------------------------------
def _job(root: Path, name: str, overrides: list[str], report: dict[str, Any] | None) -> None:
    job = root / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if report is not None:
        (job / "report.json").write_text(json.dumps(report))


def _report(seed: int, clean: float, robust: float, cert: float | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "seed": seed,
        "clean_accuracy": clean,
        "robust_accuracy": {"pgd": robust},
    }
    if cert is not None:
        out["certified"] = {"summary": {"ibp": cert}}
    return out


def test_grouping_single_jobs_missing_jobs_and_certified_metrics(tmp_path: Path) -> None:
    _job(tmp_path, "0", ["method=a", "seed=0", "trainer.max_epochs=3"], _report(0, 0.9, 0.5, 0.4))
    _job(tmp_path, "1", ["method=a", "seed=1", "trainer.max_epochs=3"], _report(1, 0.8, 0.3, 0.2))
    _job(tmp_path, "2", ["method=b", "seed=0", "trainer.max_epochs=3"], _report(0, 0.7, 0.6))
    _job(tmp_path, "3", ["method=b", "seed=1", "trainer.max_epochs=3"], None)  # failed
    (tmp_path / "notes").mkdir()  # not a job
    summary = summarize_sweep(tmp_path)
    assert summary.keys == ["method"] and summary.fixed == {"trainer.max_epochs": "3"}
    assert summary.missing == ["3"]
    a, b = summary.groups
    assert a.overrides == {"method": "a"} and a.seeds == [0, 1]
    assert a.mean("clean") == pytest.approx(0.85) and a.std("clean") == pytest.approx(0.0707107)
    assert a.mean("certified/ibp") == pytest.approx(0.3)
    assert b.mean("robust/pgd") == pytest.approx(0.6) and b.std("robust/pgd") is None
    assert b.mean("certified/ibp") is None
    rows = _csv_rows(tmp_path / SUMMARY_CSV)
    assert rows[1]["robust/pgd_std"] == "" and rows[1]["certified/ibp_mean"] == ""
    md = (tmp_path / SUMMARY_MD).read_text()
    assert "60.0 (n=1)" in md and "85.0 ± 7.1" in md and "without a report" in md


def test_no_reports_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no job folder"):
        summarize_sweep(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        summarize_sweep(tmp_path / "nope")
