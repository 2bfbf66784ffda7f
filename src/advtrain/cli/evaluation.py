"""The evaluation a training run ends with: the same pipeline and report as ``advtrain-eval``.

The ``evaluation`` node of ``conf/train.yaml`` takes the keys of ``conf/eval.yaml`` (attacks
from the ``conf/attacks/`` presets on the ``threat`` node, ``eps_grid``, ``certify``, ``sanity``);
:func:`evaluate_checkpoint` builds the plan (:func:`advtrain.cli.eval_plan.build_plan`), runs
:func:`advtrain.evaluation.run_evaluation` on the test split and writes one report schema, so a
training run's ``report.md`` has every section an ``advtrain-eval`` report has. Finished units of
work are kept in ``<output_dir>/eval_state``: a run requeued during its final evaluation does not
redo them.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from advtrain.checkpoints import load_weights
from advtrain.cli.config import lightning_package
from advtrain.cli.eval_data import load_split
from advtrain.cli.eval_plan import build_plan, threat_model
from advtrain.cli.eval_report import assemble_report, state_fingerprint, write_config
from advtrain.data.base import tensors_sha256
from advtrain.evaluation.flags import untrained_flag
from advtrain.evaluation.pipeline import run_evaluation
from advtrain.evaluation.report import report_sections
from advtrain.evaluation.state import StateMismatchError, UnitStore
from advtrain.evaluation.units import UnitRunner
from advtrain.models.view import ClassifierView
from advtrain.report import environment, sha256_file, write_report

if TYPE_CHECKING:
    from lightning.pytorch import LightningModule


def threat_normalization(
    cfg: DictConfig, data_normalization: dict[str, Any] | None
) -> dict[str, Any] | None:
    """Where the inputs are normalised: in the data (found by the training callback) or inside
    the model (``model.mean``/``model.std``, a :class:`~advtrain.models.Normalize` layer)."""
    if data_normalization is not None:
        return {"where": "data", **data_normalization}
    model = cfg.get("model") or {}
    mean, std = model.get("mean"), model.get("std")
    if mean is None or std is None:
        return None
    as_list = OmegaConf.to_container(OmegaConf.create({"m": mean, "s": std}), resolve=True)
    values = {k: v if isinstance(v, list) else [v] for k, v in as_list.items()}  # type: ignore[union-attr]
    return {"where": "model", "mean": values["m"], "std": values["s"], "source": "model"}


def _weights(
    module: LightningModule, checkpoint: str | None, output_dir: Path
) -> tuple[nn.Module, dict[str, Any]]:
    """The classifier with the checkpoint's weights (read tensors only), saved as ``model.pt``."""
    classifier: nn.Module = module.model if hasattr(module, "model") else module
    if checkpoint is not None:
        load_weights(classifier, checkpoint)
    classifier = classifier.cpu().eval()
    weights_path = output_dir / "model.pt"
    torch.save(classifier.state_dict(), weights_path)
    return classifier, {
        "path": str(weights_path),
        "sha256": sha256_file(weights_path),
        "source": checkpoint,
        "source_sha256": sha256_file(checkpoint) if checkpoint else None,
        "format": "state_dict",
        "loaded_with": "weights_only",
    }


def evaluate_checkpoint(
    cfg: DictConfig,
    module: LightningModule,
    datamodule: Any,
    checkpoint: str | None,
    output_dir: Path,
    timings: dict[str, float],
    data_normalization: dict[str, Any] | None = None,
    trained_steps: int | None = None,
    data_provenance: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluates the best checkpoint on the test split and writes the report.

    ``data_normalization`` is the normalisation the training callback found in the training
    data (``None``: the data was in pixels): the test split is read in pixels and the model seen
    through it, so eps stays in pixels. ``trained_steps`` (the optimizer steps the run took) of 0
    raises the ``untrained_model`` flag. ``data_provenance``: the training data's manifest
    summary (:class:`~advtrain.callbacks.DataProvenance`), recorded in the report.
    """
    start = time.perf_counter()
    classifier, ckpt = _weights(module, checkpoint, output_dir)
    ev = cfg.evaluation
    threat = threat_model(cfg.threat)
    norm = None if data_normalization is None else [data_normalization[k] for k in ("mean", "std")]
    data = load_split(datamodule, "test", ev.get("n_examples"), threat.bounds, norm)
    # Attack and certify on the GPU when there is one (the saved weights above are CPU tensors).
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net = classifier.to(device)
    if data.normalization is not None:
        net = ClassifierView(classifier, data.normalization).to(device).eval()
    plan = build_plan(ev, threat, int(ev.get("seed", cfg.seed)))
    data_sha = tensors_sha256(data.x, data.y)
    settings = {**plan.settings(), "n_examples": int(data.y.numel()), "device": str(device)}
    env = environment(lightning_package(cfg))
    fingerprint = state_fingerprint(settings, ckpt["sha256"], data_sha, env)
    try:  # units of an evaluation of these weights, interrupted: reuse them
        store = UnitStore(output_dir / "eval_state", fingerprint, settings, resume=True)
    except StateMismatchError:  # of other weights (an earlier attempt's checkpoint): discard
        store = UnitStore(output_dir / "eval_state", fingerprint, settings, resume=False)
    out = run_evaluation(net, data.x, data.y, plan, UnitRunner(store, plan.seed), None)
    flags = []
    if trained_steps == 0:
        flags.append(untrained_flag())
        print(f"advtrain-train: WARNING untrained_model: {flags[0]['message']}", file=sys.stderr)
    sections = report_sections(out, plan, flags)
    normalization = threat_normalization(cfg, data_normalization)
    if normalization is not None:  # eps is in pixels; say where the inputs are normalised
        sections["threat_model"]["normalization"] = normalization
    timings.update(out.seconds)
    timings["evaluate"] = time.perf_counter() - start
    report = assemble_report(
        sections,
        kind="train",
        data={"name": str(cfg.data.get("name", "data")), "split": "test", "source": data.source},
        checkpoint=ckpt,
        config=write_config(cfg, output_dir),
        data_sha256=data_sha,
        seed=int(cfg.seed),
        timings=timings,
        environment=env,
        settings=settings,
        **({"data_provenance": data_provenance} if data_provenance else {}),
    )
    write_report(report, output_dir)
    return report


__all__ = ["evaluate_checkpoint", "threat_normalization"]
