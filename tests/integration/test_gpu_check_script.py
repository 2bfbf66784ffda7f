"""The benchmarks run on a lent GPU (scripts/gpu_check.sh, which runs scripts/bench/gpu_check.py,
and scripts/bench/profile_callback.py) run their code paths on the CPU.

The numbers they print on a lent GPU go into BENCHMARKS.md; here they run with tiny sizes and a
small model so a broken script is found before device time is spent on it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_script(name: str, *args: str) -> str:
    """Runs ``python -m scripts.bench.<name>`` with ``args`` from the repository root on one
    thread; returns its standard output."""
    proc = subprocess.run(
        [sys.executable, "-m", f"scripts.bench.{name}", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_gpu_check_runs_on_cpu() -> None:
    out = run_script("gpu_check", "--device", "cpu", "--quick", "--model", "small_cnn")
    assert "## GPU check on CPU" in out
    assert "Traceback" not in out, out  # every section ran to its end
    lines = out.splitlines()
    for precision in ("32-true", "bf16-mixed", "16-mixed"):
        assert any(line.startswith(f"| {precision} |") for line in lines), out
        assert f"PGD-AT small_cnn {precision}" in out
    attack_rows = [line for line in lines if line.startswith(("| PGD-50", "| APGD-CE", "| AutoA"))]
    assert len(attack_rows) == 3 and all(row.endswith("| yes |") for row in attack_rows), out
    assert "float16 underflow case" in out
    assert "smoothing certify" in out


def test_profile_callback_diffs_the_two_variants_on_cpu() -> None:
    """``scripts/bench/profile_callback.py``, the tool behind the GPU profile in BENCHMARKS.md: the
    callback's Fast-AT does its input check (``aminmax``) where the hand loop does not."""
    out = run_script(
        "profile_callback", "--method", "fast_at", "--epochs", "1", "--threads", "1", "--rows=5"
    )
    assert "## fast_at: per training step, callback vs hand (cpu, 1 epochs)" in out
    assert out.count(" us wall per step") == 2
    check = [line for line in out.splitlines() if line.startswith("| aten::aminmax |")]
    assert check and check[-1].split("|")[2:4] == [" 2.0 ", " 0.0 "], out
