"""Real 2-process DDP (gloo on CPU) through the command line's ``run``: PGD-AT (attack mode),
TRADES (loss mode), Fast-AT (with the guard) and Free-AT (replays inside the Lightning step, the
CLI's default, and ``free_at_loader``: one Lightning step per replay from the replayed loader).

The file is also the script the test launches (``python test_callback_ddp.py OUT METHOD...``);
Lightning re-runs it for rank 1. Each rank writes what it saw to ``OUT/METHOD/rank<r>.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch

from advtrain.callbacks.batch import split_batch

METHODS = ("pgd_at", "trades", "fast_at", "free_at", "free_at_loader")
COMPARED = ("pgd_at", "trades")  # also run in one process, for the metrics comparison


def overrides(method: str, processes: int) -> list[str]:
    """The same total batch (64) and number of optimizer steps for 1 and 2 processes."""
    variant = []
    if method == "free_at_loader":
        method, variant = "free_at", ["method.callback.replay_in_step=false"]
    common = [
        *variant,
        f"method={method}",
        "evaluation=standard",
        "trainer.max_epochs=4",
        "trainer.enable_progress_bar=false",
        f"data.module.batch_size={64 // processes}",
        "attack.steps=2",
        "evaluation.n_examples=200",
        "evaluation.attacks.pgd-50x5.steps=10",
        "evaluation.attacks.pgd-50x5.restarts=1",
        "~evaluation.attacks.autoattack",
        "evaluation.eps_grid.factors=[0.0,1.0]",
        "evaluation.attacks.apgd-ce.steps=3",
        "callbacks.robust_evaluation.n_examples=64",
        "callbacks.robust_evaluation.attack.steps=3",
        "callbacks.robust_evaluation.every_n_epochs=4",
    ]
    if method == "fast_at":
        common.append("callbacks.guard.n_examples=64")
    if processes == 1:
        return [*common, "trainer=cpu"]
    return [*common, "trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu"]


def digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


class Recorder(pl.Callback):
    """Records, per rank: the first clean batch, the first attack's random stream and output,
    the number of steps, the final weights and the guard's history."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.info: dict[str, Any] = {}

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.info["rank"] = trainer.global_rank
        self.info["world_size"] = trainer.world_size
        for cb in trainer.callbacks:  # type: ignore[attr-defined]
            loss = getattr(cb, "loss", None)
            attack = getattr(cb, "attack", None) or getattr(loss, "attack", None)
            if attack is not None and type(cb).__name__ == "AdversarialTraining":
                self._wrap(attack)

    def _wrap(self, attack: Any) -> None:
        perturb = attack.perturb

        def recording(model: Any, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            if "first_seed" not in self.info:
                gen = attack.generator(x.device)
                clone = torch.Generator(device=x.device)
                clone.set_state(gen.get_state())
                self.info["first_seed"] = attack.seed
                self.info["first_random_draw"] = digest(torch.rand(64, generator=clone))
                out = perturb(model, x, y)
                self.info["first_x_adv"] = digest(out)
                return out
            return perturb(model, x, y)

        attack.perturb = recording

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int
    ) -> None:
        if "first_batch" not in self.info:
            self.info["first_batch"] = digest(split_batch(batch, 0, 1)[0])

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.info["global_step"] = trainer.global_step
        self.info["num_training_batches"] = trainer.num_training_batches
        self.info["weights"] = digest(torch.cat([p.flatten() for p in pl_module.parameters()]))
        for cb in trainer.callbacks:  # type: ignore[attr-defined]
            if hasattr(cb, "history"):
                self.info["guard_history"] = cb.history
            if type(cb).__name__ == "DataProvenance":
                self.info["data_root"] = cb.manifest.root
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(self.info))


def main(out: Path, methods: list[str], processes: int) -> None:
    from advtrain.cli.config import compose
    from advtrain.cli.train import run

    torch.set_num_threads(1)
    for method in methods:
        cfg = compose(overrides=overrides(method, processes), output_dir=str(out / method))
        report = run(cfg, extra_callbacks=[Recorder(out / method)])
        if report is not None:
            (out / method / "summary.json").write_text(json.dumps(report))


# -- tests --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, __file__, str(out), "2", *METHODS],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return out


@pytest.fixture(scope="module")
def single_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("single")
    previous = torch.get_num_threads()
    try:
        main(out, list(COMPARED), processes=1)
    finally:
        torch.set_num_threads(previous)
    return out


def ranks(out: Path, method: str) -> list[dict[str, Any]]:
    return [json.loads((out / method / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.mark.ddp
@pytest.mark.parametrize("method", METHODS)
def test_ddp_completes_with_per_rank_data_and_random_starts(ddp_runs: Path, method: str) -> None:
    r0, r1 = ranks(ddp_runs, method)
    assert (r0["rank"], r1["rank"], r0["world_size"]) == (0, 1, 2)
    assert (ddp_runs / method / "summary.json").exists(), "rank zero wrote the report"
    assert r0["first_batch"] != r1["first_batch"], "each rank trains on its own shard"
    assert r0["global_step"] == r1["global_step"] > 0
    # both ranks hashed the same training data; rank zero's manifest names it
    from advtrain.provenance import Manifest

    manifest = Manifest.load(ddp_runs / method / "checkpoints" / "data_manifest.json")
    assert r0["data_root"] == r1["data_root"] == manifest.root and manifest.size == 1257
    # every optimizer step (each replay of Free-AT's) all-reduced the gradients
    assert r0["weights"] == r1["weights"], "the replicas stayed identical"
    # Free-AT: 4 epochs / 4 replays = 1 epoch; 629 digits per rank in batches of 32
    if method == "free_at":  # 20 Lightning steps, each running the 4 replays
        assert r0["num_training_batches"] == 20 and r0["global_step"] == 20
        return
    if method == "free_at_loader":  # every replay is a Lightning step
        assert r0["num_training_batches"] == 4 * 20 and r0["global_step"] == 4 * 20
        return
    assert r0["first_seed"] != r1["first_seed"]
    assert r0["first_random_draw"] != r1["first_random_draw"], "per-rank random starts"
    assert r0["first_x_adv"] != r1["first_x_adv"]
    if method == "fast_at":  # the guard decided the same on both ranks from reduced counts
        assert len(r0["guard_history"]) == 3, "one check per epoch: Fast-AT trains 2/3 of 4"
        assert r0["guard_history"] == r1["guard_history"]


@pytest.mark.ddp
@pytest.mark.parametrize("method", COMPARED)
def test_ddp_metrics_match_one_process_within_noise(
    ddp_runs: Path, single_runs: Path, method: str
) -> None:
    ddp = json.loads((ddp_runs / method / "summary.json").read_text())
    one = json.loads((single_runs / method / "summary.json").read_text())
    # 200 test digits: one standard error of an accuracy near 0.5 is about 0.035
    assert abs(ddp["clean_accuracy"] - one["clean_accuracy"]) <= 0.12, (ddp, one)
    r_ddp, r_one = ddp["robust_accuracy"]["pgd-50x5"], one["robust_accuracy"]["pgd-50x5"]
    assert abs(r_ddp - r_one) <= 0.12, (r_ddp, r_one)
    assert r_ddp > 0.1 and r_one > 0.1, "both runs learned some robustness"


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[3:], processes=int(sys.argv[2]))
