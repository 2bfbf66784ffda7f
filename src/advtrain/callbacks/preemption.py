"""Checkpoint and requeue on the scheduler's warning signal, at a batch boundary.

A SLURM job that is about to hit its time limit or be preempted is sent a signal first
(``#SBATCH --signal=USR2@120``; hydra-submitit-launcher asks for ``USR2`` ``signal_delay_s``
seconds ahead). :class:`RequeueOnSignal` turns that signal into: finish the current training
batch, write a full Lightning checkpoint (model, optimizer, loops, callbacks, the data loader's
position in the epoch), requeue the job, exit. The requeued job starts the same command again;
``advtrain-train`` finds the checkpoint in its output folder and resumes from it, and the run ends
with exactly the weights and metrics an uninterrupted run would have.

Why not Lightning's own handler (``SLURMEnvironment(auto_requeue=True)``): it writes the checkpoint
inside the signal handler, which can run between any two Python operations (in the middle of an
optimizer step, say), so the saved state can mix two steps; and it installs itself only when no
handler for that signal exists, while submitit always installs one for ``USR2``. Lightning's
``SLURMEnvironment`` is still given the same ``requeue_signal`` (``advtrain-train`` does it), so
the two agree on which signal means "requeue".
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from advtrain.lit.adapter import Callback

if TYPE_CHECKING:
    from lightning.pytorch import LightningModule, Trainer


log = logging.getLogger(__name__)

REQUEUE_CHECKPOINT = "requeue.ckpt"

_Handler = Callable[[int, FrameType | None], Any] | int | None


def parse_signal(name: str | int | signal.Signals) -> signal.Signals:
    """``"USR2"``, ``"SIGUSR2"``, ``12`` or ``signal.SIGUSR2`` -> ``signal.SIGUSR2``.

    Raises:
        ValueError: For a name or number that is no signal of this platform.
    """
    if isinstance(name, signal.Signals):
        return name
    try:
        if isinstance(name, int) or str(name).isdigit():
            return signal.Signals(int(name))
        text = str(name).upper()
        return signal.Signals[text if text.startswith("SIG") else f"SIG{text}"]
    except (KeyError, ValueError) as err:
        raise ValueError(
            f"unknown signal {name!r}: use a name such as 'USR1', 'USR2' or 'TERM'"
        ) from err


class RequeueOnSignal(Callback):
    """On ``signum``: checkpoint at the end of the current batch, requeue the SLURM job, exit.

    A signal during an epoch's last batch (or its validation) is acted on after the next
    epoch's first batch, and one during the last epoch's at the end of training: a checkpoint
    taken before the end-of-epoch work (validation, epoch-interval LR schedulers, the callbacks'
    epoch ends) does not resume to the uninterrupted run's weights.

    Args:
        dirpath: Folder for the checkpoint (:data:`REQUEUE_CHECKPOINT` inside it).
        signum: The scheduler's warning signal (default ``USR2``, submitit's).
        requeue: Requeue the job after the checkpoint. When another handler for the signal was
            installed before the fit (submitit's, in jobs it launched), that handler is called to
            requeue and exit, so submitit's own bookkeeping (its count of timeouts) stays right;
            otherwise ``scontrol requeue $SLURM_JOB_ID`` is run and the process exits.
    """

    def __init__(
        self,
        dirpath: str | Path,
        signum: str | int | signal.Signals = "USR2",
        requeue: bool = True,
    ) -> None:
        self.dirpath = Path(dirpath)
        self.signum = parse_signal(signum)
        self.requeue = bool(requeue)
        self._received = False
        self._previous: _Handler = None
        self._installed = False
        self.stopped = False
        """True once the signal has stopped this fit (the checkpoint is written)."""

    @property
    def checkpoint_path(self) -> Path:
        """Where the checkpoint is written."""
        return self.dirpath / REQUEUE_CHECKPOINT

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Only a flag: the checkpoint is written at the next batch boundary, in a known state.
        log.warning(
            "advtrain: received %s; checkpointing after this batch", signal.Signals(signum).name
        )
        self._received = True

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._received = False
        self._previous = signal.getsignal(self.signum)
        signal.signal(self.signum, self._on_signal)
        self._installed = True

    def _restore_handler(self) -> None:
        if self._installed:
            signal.signal(
                self.signum, self._previous if self._previous is not None else signal.SIG_DFL
            )
            self._installed = False

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._restore_handler()

    def on_exception(
        self, trainer: Trainer, pl_module: LightningModule, exception: BaseException
    ) -> None:
        self._restore_handler()

    def on_train_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        received = self._received
        if trainer.world_size > 1:
            # Every rank stops at the same batch, even if the signal reached them at different
            # times (one small all-reduce per batch, only in multi-process runs).
            received = trainer.strategy.reduce_boolean_decision(received, all=False)
        if not received:
            return
        if batch_idx + 1 >= trainer.num_training_batches:
            # The epoch's last batch: its end-of-epoch work (validation, epoch-interval LR
            # schedulers, the callbacks' epoch ends) has not run yet, and a checkpoint taken here
            # does not resume to the uninterrupted run's weights. Stop after the next batch, the
            # next epoch's first, or at the end of training (on_train_end) if this was the last.
            self._received = True
            return
        self._stop(trainer)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # The signal came during the last epoch's last batch or its validation: training is
        # complete, and the checkpoint resumes to the evaluation alone.
        if self.stopped:
            return
        received = self._received
        if trainer.world_size > 1:  # saving is collective: every rank decides the same
            received = trainer.strategy.reduce_boolean_decision(received, all=False)
        if received:
            self._stop(trainer)

    def _stop(self, trainer: Trainer) -> None:
        """Writes the checkpoint, then requeues and exits (or stops the fit without requeue)."""
        self.dirpath.mkdir(parents=True, exist_ok=True)
        trainer.save_checkpoint(self.checkpoint_path)
        self.stopped = True
        log.warning("advtrain: wrote %s at step %d", self.checkpoint_path, trainer.global_step)
        if not self.requeue:
            trainer.should_stop = True
            return
        self._restore_handler()
        previous = self._previous
        if callable(previous):
            # submitit: requeues (counting timeouts) on the first task and exits.
            previous(int(self.signum), None)
            if not trainer.is_global_zero:
                # submitit leaves the other tasks to the scheduler, which stops them on requeue.
                trainer.should_stop = True
                return
        elif trainer.is_global_zero:
            _scontrol_requeue()
        raise SystemExit(f"advtrain: requeued after {signal.Signals(self.signum).name}")


def _scontrol_requeue() -> None:
    job_id = os.environ.get("SLURM_JOB_ID")
    array_job, array_task = (
        os.environ.get("SLURM_ARRAY_JOB_ID"),
        os.environ.get("SLURM_ARRAY_TASK_ID"),
    )
    if array_job is not None and array_task is not None:
        job_id = f"{array_job}_{array_task}"
    if not job_id or not re.fullmatch(r"[0-9_]+", job_id):
        log.warning("advtrain: not in a SLURM job (SLURM_JOB_ID unset); not requeued")
        return
    result = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True)
    if result.returncode != 0:
        log.warning("advtrain: scontrol requeue %s failed: %s", job_id, result.stderr.strip())


__all__ = ["REQUEUE_CHECKPOINT", "RequeueOnSignal", "parse_signal"]
