"""``advtrain-train``: train with a recipe, evaluate against strong attacks, write a report.

Usage::

    advtrain-train                                   # PGD-AT on the embedded digits (default)
    advtrain-train attack.eps=0.1 trainer.max_epochs=10 seed=1
    advtrain-train ckpt_path=outputs/.../checkpoints/last.ckpt   # resume
    advtrain-train trainer=ddp trainer.devices=2 trainer.accelerator=cpu
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from pytorch_lightning.callbacks import ModelCheckpoint

from advtrain.cli.config import coerce_fractions, register_resolvers
from advtrain.cli.evaluation import evaluate_checkpoint
from advtrain.cli.schemas import check_config, diagnose_overrides, register_schemas
from advtrain.report import summary_table


def build_callbacks(cfg: DictConfig) -> list[pl.Callback]:
    """The method's training callback (if any) and the configured callbacks, instantiated."""
    callbacks: list[pl.Callback] = []
    method_cb = cfg.method.get("callback")
    if method_cb is not None:
        callbacks.append(instantiate(method_cb, _convert_="all"))
    for name, node in (cfg.get("callbacks") or {}).items():
        if node is None:
            continue
        cb = instantiate(node, _convert_="all")
        if not isinstance(cb, pl.Callback):
            raise TypeError(f"callbacks.{name} did not build a Lightning Callback: {cb!r}")
        callbacks.append(cb)
    return callbacks


def _best_checkpoint(trainer: pl.Trainer) -> str | None:
    """The monitored (best) checkpoint if any, else the most recent one saved."""
    found: list[str] = []
    for cb in trainer.callbacks:  # type: ignore[attr-defined]
        if (
            isinstance(cb, ModelCheckpoint)
            and cb.best_model_path
            and Path(cb.best_model_path).exists()
        ):
            found.insert(0 if cb.monitor else len(found), str(cb.best_model_path))
    return found[0] if found else None


def run(cfg: DictConfig, extra_callbacks: list[pl.Callback] | None = None) -> dict[str, Any] | None:
    """Trains and evaluates as configured; returns the report on rank zero (``None`` elsewhere).

    Args:
        cfg: A composed ``train`` config (see :func:`advtrain.cli.config.compose`).
        extra_callbacks: More Lightning callbacks for this run (programmatic use).

    Raises:
        advtrain.cli.schemas.ConfigError: For a configuration that cannot run (unknown keys,
            ``trainer=ddp`` with one device...), before anything is built.
    """
    register_resolvers()
    coerce_fractions(cfg)
    check_config(cfg)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    datamodule = instantiate(cfg.data.module, _convert_="all")
    model = instantiate(cfg.model, _convert_="all")
    module = instantiate(cfg.module, model=model, _convert_="all")
    callbacks = build_callbacks(cfg) + list(extra_callbacks or [])
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=logger)
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    timings["train"] = time.perf_counter() - start
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
    )
    print(summary_table(report, str(output_dir / "report.md")))
    return report


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def _hydra_main(cfg: DictConfig) -> None:
    run(cfg)


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


__all__ = ["build_callbacks", "main", "run"]

if __name__ == "__main__":
    main()
