"""Mid-epoch checkpoints resume exactly: RequeueOnSignal and the resumable training loader.

(The same path through a real SLURM requeue is in test_slurm.py.)
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from advtrain.attacks import PGD
from advtrain.callbacks import AdversarialTraining, RequeueOnSignal
from advtrain.callbacks.preemption import REQUEUE_CHECKPOINT, parse_signal
from advtrain.cli.config import compose
from advtrain.cli.train import run
from advtrain.data import DigitsDataModule
from advtrain.data.base import EpochSeededSampler
from advtrain.data.resumable import ResumableDataLoader
from advtrain.lit import AdversarialClassifier
from advtrain.models import SmallCNN

from .conftest import FAST

EPOCHS = 2
BATCHES = 10  # 1257 training digits in batches of 128


class SignalAtStep(pl.Callback):
    """Sends the process a signal in the middle of a chosen training step."""

    def __init__(self, step: int, signum: signal.Signals) -> None:
        self.step, self.signum = step, signum

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


def _fit(tmp: Path, callbacks: list[pl.Callback], ckpt_path: str | None = None) -> pl.Trainer:
    pl.seed_everything(0, verbose=False)
    data = DigitsDataModule(batch_size=128, seed=0)
    module = AdversarialClassifier(SmallCNN(num_classes=10), num_classes=10)
    attack = PGD(eps=0.2, steps=2, seed=0)
    trainer = pl.Trainer(
        max_epochs=EPOCHS,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        default_root_dir=tmp,
        callbacks=[AdversarialTraining(attack=attack), *callbacks],
    )
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    return trainer


def _weights(trainer: pl.Trainer) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in trainer.lightning_module.parameters()])


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> torch.Tensor:
    return _weights(_fit(tmp_path_factory.mktemp("full"), []))


def test_signal_mid_epoch_checkpoints_and_resume_matches(
    tmp_path: Path, uninterrupted: torch.Tensor
) -> None:
    handler = RequeueOnSignal(tmp_path / "ckpt", signum="USR2", requeue=False)
    before = signal.getsignal(signal.SIGUSR2)
    stopped = _fit(tmp_path, [handler, SignalAtStep(13, signal.SIGUSR2)])
    # The signal handler only sets a flag: the checkpoint is written after the whole step.
    assert handler.stopped
    assert stopped.global_step == 14
    assert signal.getsignal(signal.SIGUSR2) == before  # the previous handler is back
    checkpoint = torch.load(handler.checkpoint_path, weights_only=True)
    assert checkpoint["global_step"] == 14
    # The checkpoint is 4 batches into the second epoch.
    assert checkpoint["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [
        {"epoch": 1, "batches_done": 4}
    ]
    resumed = _fit(tmp_path, [], ckpt_path=str(handler.checkpoint_path))
    assert resumed.global_step == EPOCHS * BATCHES
    assert torch.equal(_weights(resumed), uninterrupted)


def test_a_plain_loader_would_not_resume_exactly(
    tmp_path: Path, uninterrupted: torch.Tensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The control: without the loader's saved position the resumed epoch starts from its first
    # batch again, and the run ends elsewhere (this is what ResumableDataLoader fixes).
    handler = RequeueOnSignal(tmp_path / "ckpt", signum="USR2", requeue=False)
    _fit(tmp_path, [handler, SignalAtStep(13, signal.SIGUSR2)])
    monkeypatch.setattr(ResumableDataLoader, "load_state_dict", lambda self, state: None)
    resumed = _fit(tmp_path, [], ckpt_path=str(handler.checkpoint_path))
    assert not torch.equal(_weights(resumed), uninterrupted)


def test_resumable_loader_skips_the_trained_batches() -> None:
    data = TensorDataset(torch.arange(20.0))
    sampler = EpochSeededSampler(data, seed=1)
    loader = ResumableDataLoader(data, batch_size=4, sampler=sampler, batches_done=lambda: 2)
    sampler.set_epoch(3)
    full = [b[0].tolist() for b in loader]
    assert loader.state_dict() == {"epoch": 3, "batches_done": 2}
    fresh_sampler = EpochSeededSampler(data, seed=1)
    fresh = ResumableDataLoader(data, batch_size=4, sampler=fresh_sampler)
    fresh.load_state_dict({"epoch": 3, "batches_done": 2})
    assert fresh_sampler.epoch == 3
    assert [b[0].tolist() for b in fresh] == full[2:]
    # Iterating the same epoch again (Lightning may) still skips; a later epoch does not.
    assert [b[0].tolist() for b in fresh] == full[2:]
    fresh_sampler.set_epoch(4)
    assert len(list(fresh)) == 5
    fresh_sampler.set_epoch(3)
    assert len(list(fresh)) == 5  # the position was for the earlier pass only


def test_loader_position_at_an_epoch_boundary_is_ignored() -> None:
    data = TensorDataset(torch.arange(8.0))
    loader = ResumableDataLoader(data, batch_size=4, sampler=EpochSeededSampler(data))
    loader.load_state_dict({"epoch": 0, "batches_done": 2})  # the whole epoch was done
    assert len(list(loader)) == 2
    with pytest.raises(ValueError, match="batches_done"):
        loader.load_state_dict({"epoch": 0})


def test_plain_dataloader_state_is_not_faked() -> None:
    assert not hasattr(DataLoader, "state_dict")


@pytest.mark.parametrize("name", ["USR2", "SIGUSR2", "usr2", int(signal.SIGUSR2), signal.SIGUSR2])
def test_parse_signal(name: object) -> None:
    assert parse_signal(name) == signal.SIGUSR2  # type: ignore[arg-type]


def test_parse_signal_refuses_unknown_names() -> None:
    with pytest.raises(ValueError, match="unknown signal"):
        parse_signal("USR9")


def test_requeue_checkpoint_name() -> None:
    handler = RequeueOnSignal("somewhere")
    assert handler.checkpoint_path == Path("somewhere") / REQUEUE_CHECKPOINT
    assert handler.signum == signal.SIGUSR2


# -- through advtrain-train: the epoch's end (validation, robust evaluation, checkpoints) -------
CLI_RUN = [
    *(o for o in FAST if not o.startswith("trainer.max_epochs")),
    "trainer.max_epochs=3",
    "++trainer.limit_val_batches=1",
    "evaluation.n_examples=24",
    "evaluation.eps_grid.factors=[0.0,1.0]",
    "seed=3",
]
CLI_BATCHES = 4  # FAST's limit_train_batches


def _last_weights(output_dir: Path) -> dict[str, torch.Tensor]:
    path = output_dir / "checkpoints" / "last.ckpt"
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def cli_uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    output_dir = tmp_path_factory.mktemp("cli_full")
    run(compose(overrides=CLI_RUN, output_dir=str(output_dir)))
    return _last_weights(output_dir)


@pytest.mark.parametrize(
    ("step", "stopped_at"),
    [
        (CLI_BATCHES - 1, CLI_BATCHES + 1),  # the first epoch's last batch: after the next one
        (3 * CLI_BATCHES - 1, 3 * CLI_BATCHES),  # the last batch of all: at the end of training
    ],
)
def test_a_signal_in_an_epochs_last_batch_resumes_exactly_through_the_cli(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    cli_uninterrupted: dict[str, torch.Tensor],
    step: int,
    stopped_at: int,
) -> None:
    """A checkpoint at an epoch's last batch would come before its end-of-epoch work and resume
    elsewhere (it did, in a SLURM test on a loaded machine): the handler waits past it."""
    # A SLURM job as Lightning detects one, outside any real job (no SLURM_JOB_ID: the handler
    # checkpoints and exits without `scontrol requeue`).
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("SLURM_JOB_NAME", "advtrain-test")
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    with pytest.raises(SystemExit, match="requeued"):
        run(
            compose(overrides=CLI_RUN, output_dir=str(tmp_path)),
            extra_callbacks=[SignalAtStep(step, signal.SIGUSR2)],
        )
    checkpoint = torch.load(
        tmp_path / "checkpoints" / REQUEUE_CHECKPOINT, map_location="cpu", weights_only=True
    )
    assert checkpoint["global_step"] == stopped_at
    assert run(compose(overrides=CLI_RUN, output_dir=str(tmp_path))) is not None  # resumed
    resumed = _last_weights(tmp_path)
    assert resumed.keys() == cli_uninterrupted.keys()
    for name, value in cli_uninterrupted.items():
        assert torch.equal(resumed[name], value), name
