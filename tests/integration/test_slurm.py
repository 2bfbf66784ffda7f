"""``hydra/launcher=slurm`` on a real one-node SLURM cluster (``scripts/local_slurm.sh up``).

(a) a two-job multirun through hydra-submitit-launcher writes both reports and the sweep summary;
(b) preemption: the job is sent the scheduler's warning signal mid-training, writes a checkpoint
at the end of the batch, is requeued, resumes, and ends with exactly the weights and metrics of an
uninterrupted run of the same configuration.

``.ci/run`` installs the Debian packages, starts the cluster and exports ``SLURM_CONF``.
Elsewhere these tests are skipped when no cluster answers (in CI they fail instead).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from .conftest import FAST, TINY

pytestmark = pytest.mark.slurm

SLURM_CONF = os.environ.get("SLURM_CONF", "/tmp/advtrain-slurm/slurm.conf")
ENV = {
    **os.environ,
    "SLURM_CONF": SLURM_CONF,
    "PYTHONWARNINGS": "ignore",
    "OMP_NUM_THREADS": "1",
}
LAUNCHER = [
    "hydra/launcher=slurm",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.timeout_min=30",
]


def _cluster_up() -> bool:
    if shutil.which("sinfo") is None or not Path(SLURM_CONF).exists():
        return False
    proc = subprocess.run(
        ["sinfo", "-h", "-o", "%t"], env=ENV, capture_output=True, text=True, timeout=30
    )
    return proc.returncode == 0 and any(s in proc.stdout for s in ("idle", "mix", "alloc"))


@pytest.fixture(scope="module", autouse=True)
def cluster() -> None:
    if not _cluster_up():
        message = "no SLURM cluster answers (sudo scripts/local_slurm.sh up)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def _advtrain_train() -> str:
    return str(Path(sys.executable).with_name("advtrain-train"))


def _squeue(*fields: str) -> list[list[str]]:
    proc = subprocess.run(
        ["squeue", "-h", "-o", "|".join(fields)], env=ENV, capture_output=True, text=True
    )
    return [line.split("|") for line in proc.stdout.splitlines() if line.strip()]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def test_multirun_on_slurm_writes_every_report(tmp_path: Path) -> None:
    sweep = tmp_path / "multirun"
    proc = subprocess.run(
        [_advtrain_train(), "-m", "seed=0,1", *TINY, *LAUNCHER, f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    seeds = set()
    for job in ("0", "1"):
        report = json.loads((sweep / job / "report.json").read_text())
        seeds.add(report["seed"])
        # The job really ran inside SLURM: submitit's log of it is there.
        assert list((sweep / ".submitit").glob("*/*_log.out")), "no submitit job logs"
    assert seeds == {0, 1}
    assert (sweep / "sweep_summary.csv").exists()
    # The launcher's sacct polling is silenced (no accounting database here).
    assert "Bypassing sacct error" not in proc.stderr


def test_a_request_no_node_can_run_fails_before_submission(tmp_path: Path) -> None:
    """SLURM would queue it for ever (PENDING, PartitionConfig); advtrain-train refuses it."""
    sweep = tmp_path / "multirun"
    launcher = [o for o in LAUNCHER if "cpus_per_task" not in o]
    start = time.monotonic()
    proc = subprocess.run(
        [
            _advtrain_train(),
            "-m",
            "seed=0,1",
            *TINY,
            *launcher,
            "hydra.launcher.cpus_per_task=1000",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    assert "no job could ever start" in proc.stderr, proc.stderr[-3000:]
    assert "set hydra.launcher.cpus_per_task=" in proc.stderr
    assert time.monotonic() - start < 120
    assert not list(sweep.glob(".submitit/*")), "nothing was submitted"
    assert not [job for job in _squeue("%j") if "train" in job[0]]


PREEMPT = [
    *(o for o in FAST if not o.startswith(("trainer.max_epochs", "++trainer.limit_train"))),
    "trainer.max_epochs=12",
    "++trainer.limit_train_batches=10",
    "++trainer.limit_val_batches=1",
    "evaluation.n_examples=24",
    "evaluation.eps_grid.factors=[0.0,1.0]",
    "seed=3",
]


def test_preempted_job_resumes_and_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    # The uninterrupted run, on this machine, no SLURM.
    reference_dir = tmp_path / "reference"
    env_local = {k: v for k, v in ENV.items() if not k.startswith("SLURM_JOB")}
    proc = subprocess.run(
        [_advtrain_train(), *PREEMPT, f"hydra.run.dir={reference_dir}"],
        cwd=tmp_path,
        env=env_local,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    sweep = tmp_path / "multirun"
    job_dir = sweep / "0"
    launcher = subprocess.Popen(
        [_advtrain_train(), "-m", *PREEMPT, *LAUNCHER, f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Wait until training is under way (the first epoch's checkpoint is written)...
        deadline = time.monotonic() + 600
        while not (job_dir / "checkpoints" / "last.ckpt").exists():
            assert launcher.poll() is None, launcher.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the job never started training"
            time.sleep(0.2)
        jobs = _squeue("%i", "%T")
        assert len(jobs) == 1 and jobs[0][1] == "RUNNING", jobs
        job_id = jobs[0][0]
        # ... then send the warning signal the scheduler sends before preempting a job.
        subprocess.run(["scancel", "--signal=USR2", job_id], env=ENV, check=True)
        # Slurm holds a requeued batch job for 120 s (hard-coded); release it now, as an admin
        # could, so the test does not sit idle.
        deadline = time.monotonic() + 300
        released = False
        while launcher.poll() is None and time.monotonic() < deadline:
            state = _squeue("%i", "%T", "%r")
            if state and state[0][1] == "PENDING" and state[0][2] == "BeginTime":
                subprocess.run(
                    ["scontrol", "update", f"JobId={job_id}", "StartTime=now"], env=ENV, check=True
                )
                released = True
                break
            time.sleep(0.2)
        assert released, "the job was not requeued"
        _out, err = launcher.communicate(timeout=900)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode == 0, err[-3000:]

    logs = "\n".join(p.read_text() for p in (sweep / ".submitit").glob("*/*_log.*"))
    assert "wrote" in logs and "requeue.ckpt" in logs, logs[-3000:]
    assert "resuming from" in logs, logs[-3000:]
    checkpoint = torch.load(
        job_dir / "checkpoints" / "requeue.ckpt", map_location="cpu", weights_only=True
    )
    final_epochs = 12
    assert 0 < checkpoint["global_step"] < final_epochs * 10, "the signal did not land mid-training"

    # Exactly the uninterrupted run's weights and metrics.
    resumed, reference = (
        _weights(job_dir / "checkpoints" / "last.ckpt"),
        _weights(reference_dir / "checkpoints" / "last.ckpt"),
    )
    assert resumed.keys() == reference.keys()
    for name in reference:
        assert torch.equal(resumed[name], reference[name]), name
    a = json.loads((job_dir / "report.json").read_text())
    b = json.loads((reference_dir / "report.json").read_text())
    for key in ("clean_accuracy", "robust_accuracy", "counts", "per_class", "eps_curve"):
        assert a[key] == b[key], key


def test_ddp_job_runs_one_task_per_device(tmp_path: Path) -> None:
    sweep = tmp_path / "multirun"
    proc = subprocess.run(
        [
            _advtrain_train(),
            "-m",
            "trainer=ddp",
            "trainer.devices=2",
            "trainer.accelerator=cpu",
            *TINY,
            *LAUNCHER,
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((sweep / "0" / "report.json").read_text())["n_examples"] == 24
    logs = "\n".join(p.read_text() for p in (sweep / ".submitit").glob("*/*_log.*"))
    # Two SLURM tasks (tasks_per_node = devices), and Lightning took its ranks from SLURM.
    for rank in ("GLOBAL_RANK: 0, MEMBER: 1/2", "GLOBAL_RANK: 1, MEMBER: 2/2"):
        assert rank in logs, logs[-2000:]
