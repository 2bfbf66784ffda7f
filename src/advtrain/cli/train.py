"""``advtrain-train``: train with a recipe, evaluate against strong attacks, write a report.

Usage::

    advtrain-train                                   # PGD-AT on the embedded digits (default)
    advtrain-train threat.eps=0.1 trainer.max_epochs=10 seed=1   # threat.eps=8/255 also works
    advtrain-train ckpt_path=outputs/.../checkpoints/last.ckpt   # resume
    advtrain-train trainer=ddp trainer.devices=2 trainer.accelerator=cpu
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

from advtrain.callbacks.preemption import REQUEUE_CHECKPOINT, RequeueOnSignal
from advtrain.callbacks.provenance import DataProvenance
from advtrain.callbacks.subset_evaluation import training_space
from advtrain.checkpoints import CheckpointError, check_training_checkpoint
from advtrain.cli.config import (
    coerce_fractions,
    diagnose_overrides,
    lightning_package,
    register_resolvers,
)
from advtrain.cli.config_checks import check_config, max_epochs_factor
from advtrain.cli.errors import ConfigError, exit_on_write_error
from advtrain.cli.evaluation import evaluate_checkpoint
from advtrain.cli.structured import register_schemas
from advtrain.cli.threat_check import check_threat
from advtrain.data.vision import DatasetNotFoundError
from advtrain.lit import adapter
from advtrain.lit.adapter import Callback
from advtrain.report import summary_table

if TYPE_CHECKING:
    from lightning.pytorch import Trainer


def build_callbacks(cfg: DictConfig) -> list[Callback]:
    """The method's training callback (if any) and the configured callbacks, instantiated."""
    pl = adapter.package(lightning_package(cfg))
    callbacks: list[Callback] = []
    method_cb = cfg.method.get("callback")
    if method_cb is not None:
        callbacks.append(instantiate(method_cb, _convert_="all"))
    for name, node in (cfg.get("callbacks") or {}).items():
        if node is None:
            continue
        cb = instantiate(node, _convert_="all")
        if not isinstance(cb, pl.Callback):
            raise TypeError(
                f"callbacks.{name} did not build a Callback of {pl.__name__} (the package this "
                f"run trains with, lightning={cfg.get('lightning', 'auto')}): {cb!r}"
            )
        callbacks.append(cb)
    return callbacks


class TrainingStepTimer(Callback):
    """Wall time spent inside training batches (attack, forward, backward, optimizer step and the
    per-batch callbacks), summed over the run: the cost of the training method itself, without
    validation, checkpointing or setup. Recorded in the report as ``timings_s.train_steps``."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._start: float | None = None

    def on_train_batch_start(self, *args: Any, **kwargs: Any) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
        if self._start is not None:
            self.seconds += time.perf_counter() - self._start
            self._start = None


def _best_checkpoint(trainer: Trainer) -> str | None:
    """The monitored (best) checkpoint if any, else the most recent one saved."""
    model_checkpoint = adapter.locate(adapter.package_of(trainer), "callbacks.ModelCheckpoint")
    found: list[str] = []
    for cb in trainer.callbacks:  # type: ignore[attr-defined]
        if (
            isinstance(cb, model_checkpoint)
            and cb.best_model_path
            and Path(cb.best_model_path).exists()
        ):
            found.insert(0 if cb.monitor else len(found), str(cb.best_model_path))
    return found[0] if found else None


def _data_normalization(trainer: Trainer) -> dict[str, Any] | None:
    """The normalisation the adversarial-training callback found in the training data."""
    space = training_space(trainer)
    return None if space is None else space.describe()


def _requeue_on_signal(cfg: DictConfig, output_dir: Path) -> RequeueOnSignal | None:
    """The preemption handler for a run inside a SLURM job (``None`` elsewhere or when off)."""
    settings = cfg.get("preemption") or {}
    slurm = adapter.locate(lightning_package(cfg), "plugins.environments.SLURMEnvironment")
    if not settings.get("enabled", True) or not slurm.detect():
        return None
    return RequeueOnSignal(
        output_dir / "checkpoints", signum=settings.get("signal", "USR2"), requeue=True
    )


def scale_max_epochs(cfg: DictConfig) -> None:
    """Applies ``method.max_epochs_factor`` to ``trainer.max_epochs``, in place.

    A method that reaches its robustness in fewer epochs than the recipe's budget (Fast-AT:
    Wong et al. 2020 train 15 epochs where PGD-AT takes far more) trains that fraction of
    ``trainer.max_epochs``, rounded up, so ``trainer.max_epochs`` keeps meaning the recipe's budget
    for every method. The config is changed before anything is built, so the report records the
    epochs actually trained. An unset or infinite ``max_epochs`` is left as it is.
    """
    factor = max_epochs_factor(cfg)
    trainer = cfg.get("trainer")
    if factor is None or factor == 1.0 or not isinstance(trainer, DictConfig):
        return
    epochs = trainer.get("max_epochs")
    if epochs is None or int(epochs) < 1:
        return
    scaled = max(1, math.ceil(int(epochs) * factor - 1e-9))
    with open_dict(trainer):
        trainer.max_epochs = scaled
    print(
        f"advtrain-train: method {cfg.method.get('name')!s} trains {scaled} of trainer.max_epochs "
        f"{epochs} (method.max_epochs_factor={factor})",
        file=sys.stderr,
    )


def _build_trainer(
    cfg: DictConfig,
    package: str,
    output_dir: Path,
    extra_callbacks: list[Callback] | None,
    step_timer: TrainingStepTimer,
) -> tuple[Trainer, RequeueOnSignal | None]:
    """The configured Trainer with the method's, the configured and the extra callbacks, and the
    requeue callback when the run is to be requeued on a signal."""
    callbacks = build_callbacks(cfg) + list(extra_callbacks or [])
    plugins: list[Any] = []
    requeue = _requeue_on_signal(cfg, output_dir)
    if requeue is not None:
        # Lightning's SLURM environment listens for the same signal the launcher sends;
        # RequeueOnSignal (not Lightning's in-handler save) writes the checkpoint.
        slurm = adapter.locate(package, "plugins.environments.SLURMEnvironment")
        plugins.append(slurm(auto_requeue=False, requeue_signal=requeue.signum))
        callbacks.append(requeue)
    # The step timer goes last, so its batch-end hook runs after every other callback's.
    callbacks.append(step_timer)
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    extra: dict[str, Any] = {"plugins": plugins} if plugins else {}
    return instantiate(cfg.trainer, callbacks=callbacks, logger=logger, **extra), requeue


def _resume_path(cfg: DictConfig, output_dir: Path, module: Any) -> str | None:
    """The checkpoint to resume from: ``ckpt_path``, else a requeued job's own checkpoint."""
    ckpt_path = cfg.get("ckpt_path")
    resume_from = output_dir / "checkpoints" / REQUEUE_CHECKPOINT
    if ckpt_path is None and resume_from.exists():
        # A requeued job (preemption, time limit): go on from where the signal stopped it.
        print(f"advtrain-train: resuming from {resume_from}", file=sys.stderr)
        ckpt_path = str(resume_from)
    if ckpt_path is not None:
        # before Lightning reads it: a clear error for anything but this run's training state
        check_training_checkpoint(str(ckpt_path), module)
    return ckpt_path


def run(cfg: DictConfig, extra_callbacks: list[Callback] | None = None) -> dict[str, Any] | None:
    """Trains and evaluates as configured; returns the report on rank zero (``None`` elsewhere).

    Args:
        cfg: A composed ``train`` config (see :func:`advtrain.cli.config.compose`).
        extra_callbacks: More Lightning callbacks for this run (programmatic use).

    Raises:
        advtrain.cli.errors.ConfigError: For a configuration that cannot run (unknown keys,
            ``trainer=ddp`` with one device, an ``attack.eps`` other than ``threat.eps``...),
            before anything is built.
    """
    register_resolvers()
    coerce_fractions(cfg)
    check_config(cfg)
    check_threat(cfg)  # attack.eps/norm must be the threat model's
    scale_max_epochs(cfg)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    package = lightning_package(cfg)
    pl = adapter.package(package)
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    datamodule = instantiate(cfg.data.module, _convert_="all")
    model = instantiate(cfg.model, _convert_="all")
    module = instantiate(cfg.module, model=model, _convert_="all")
    step_timer = TrainingStepTimer()
    trainer, requeue = _build_trainer(cfg, package, output_dir, extra_callbacks, step_timer)
    ckpt_path = _resume_path(cfg, output_dir, module)
    fit_start = time.perf_counter()
    try:
        trainer.fit(
            module,
            datamodule=datamodule,
            ckpt_path=ckpt_path,
            **adapter.weights_only_kwargs(trainer),
        )
    except DatasetNotFoundError as err:
        # The download (``prepare_data``) runs inside fit: report the data problem, which names
        # every missing file, without the Lightning internals it travelled through.
        raise DatasetNotFoundError(str(err)) from None
    timings["train"] = time.perf_counter() - start
    timings["fit"] = time.perf_counter() - fit_start
    timings["train_steps"] = step_timer.seconds
    if requeue is not None and requeue.stopped:
        return None  # stopped by the signal: the requeued job finishes the run
    if not trainer.is_global_zero:
        return None

    # fast_dev_run writes no checkpoint: evaluate the weights in memory.
    checkpoint = None if trainer.fast_dev_run else _best_checkpoint(trainer)
    report = evaluate_checkpoint(
        cfg,
        module=module,
        datamodule=datamodule,
        checkpoint=checkpoint,
        output_dir=output_dir,
        timings=timings,
        data_normalization=_data_normalization(trainer),
        trained_steps=int(trainer.global_step),
        data_provenance=_data_provenance(trainer),
    )
    print(summary_table(report, str(output_dir / "report.md")))
    return report


def _data_provenance(trainer: Any) -> dict[str, Any] | None:
    """The training data's manifest summary, if the run had a DataProvenance callback."""
    for cb in trainer.callbacks:
        if isinstance(cb, DataProvenance):
            return cb.summary()
    return None


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except (CheckpointError, ConfigError) as exc:
        print(f"advtrain-train: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except OSError as exc:
        exit_on_write_error("advtrain-train", exc)


def main() -> None:
    """Console entry point ``advtrain-train``."""
    register_resolvers()
    register_schemas()
    torch.set_float32_matmul_precision("high")
    try:
        _hydra_main()
    except (SystemExit, Exception) as err:
        # Hydra has reported the failure; for an unknown key, add the valid keys.
        if not (isinstance(err, SystemExit) and err.code in (0, None)):
            hint = diagnose_overrides(sys.argv[1:])
            if hint:
                print(f"advtrain-train: {hint}", file=sys.stderr)
        raise


__all__ = ["build_callbacks", "main", "run", "scale_max_epochs"]

if __name__ == "__main__":
    main()
