"""The evaluation a run ends with: clean and robust accuracy, the eps curve, and the report."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from advtrain.attacks.autoattack import AutoAttackResult
from advtrain.attacks.checks import SanityFlag, run_sanity_checks
from advtrain.certify.certificates import certified_section
from advtrain.cli.config import lightning_package
from advtrain.data.base import tensors_sha256
from advtrain.evaluation import evaluate_attacks
from advtrain.report import environment, sha256_file, sha256_text, write_report

if TYPE_CHECKING:
    from lightning.pytorch import LightningModule


def load_lightning_weights(module: LightningModule, checkpoint: str) -> None:
    """Loads a Lightning checkpoint's weights into ``module`` with ``weights_only=True``."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    module.load_state_dict(state["state_dict"])


def untrained_flag() -> SanityFlag:
    """The flag of a run that took no optimizer step (``trainer.max_epochs=0``, an empty
    training split): its report describes the initial weights."""
    return SanityFlag(
        code="untrained_model",
        triggered=True,
        message="the run took no optimizer step: this report evaluates the untrained, randomly "
        "initialised weights",
        advice="train for at least one epoch (trainer.max_epochs >= 1) on a non-empty split, or "
        "resume from a checkpoint that has trained",
        details={"optimizer_steps": 0},
    )


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


def evaluate_checkpoint(
    cfg: DictConfig,
    module: LightningModule,
    datamodule: Any,
    checkpoint: str | None,
    output_dir: Path,
    timings: dict[str, float],
    data_normalization: dict[str, Any] | None = None,
    trained_steps: int | None = None,
) -> dict[str, Any]:
    """Evaluates the best checkpoint on the test split and writes the report.

    Clean accuracy, each configured attack's robust accuracy and the per-example worst case
    (:func:`advtrain.evaluation.evaluate_attacks`; AutoAttack's members are listed too), robust
    accuracy along an eps grid, and the sanity flags of :mod:`advtrain.attacks.checks`.

    ``data_normalization`` is the normalisation the training callback found in the training
    data (``None``: the data was in pixels); the report records where the inputs are normalised.
    ``trained_steps`` (the optimizer steps the run took) of 0 raises the ``untrained_model`` flag.
    """
    start = time.perf_counter()
    if checkpoint is not None:
        load_lightning_weights(module, checkpoint)
    classifier: nn.Module = module.model if hasattr(module, "model") else module
    classifier = classifier.cpu().eval()
    weights_path = output_dir / "model.pt"
    torch.save(classifier.state_dict(), weights_path)

    ev = cfg.evaluation
    x, y = datamodule.test_tensors(ev.get("n_examples"))
    # Attack and certify on the GPU when there is one (the saved weights above are CPU tensors).
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    classifier, x, y = classifier.to(device), x.to(device), y.to(device)
    batch_size = int(ev.get("batch_size", 512))
    attacks = {
        str(name): instantiate(node, _convert_="all")
        for name, node in (ev.get("attacks") or {}).items()
    }
    result = evaluate_attacks(classifier, (x, y), attacks, progress=False, batch_size=batch_size)
    robust = dict(result.robust_accuracy)
    attack_info: dict[str, Any] = {}
    for name, attack in attacks.items():
        node = OmegaConf.to_container(ev.attacks[name], resolve=True)
        info: dict[str, Any] = {
            "target": str(node.pop("_target_", type(attack).__name__)),  # type: ignore[union-attr]
            "params": node,
            "description": repr(attack),
            "accuracy": robust[name],
            "correct": result.counts[name],
            "seconds": result.seconds.get(name, 0.0),
        }
        detail = result.details.get(name)
        if isinstance(detail, AutoAttackResult):
            counts = detail.counts
            info["members"] = [
                {"name": member, "accuracy_after": acc, "correct_after": counts[member]}
                for member, acc in detail.accuracies.items()
                if member in detail.robust_after
            ]
        attack_info[name] = info
    if len(attacks) > 1:
        robust["worst_case"] = result.worst_case_accuracy
    # Certified accuracy (IBP/CROWN bounds, randomized smoothing): advtrain.certify.certificates.
    certificates = {
        str(k): instantiate(v, _convert_="all") for k, v in (ev.get("certificates") or {}).items()
    }
    certified = certified_section(certificates, classifier, x, y)
    timings["evaluate"] = time.perf_counter() - start

    curve: list[dict[str, float]] = []
    curve_name = ""
    if ev.get("curve_attack") is not None and ev.get("eps_factors"):
        t0 = time.perf_counter()
        curve_attack = instantiate(ev.curve_attack, _convert_="all")
        curve_name = getattr(curve_attack, "name", type(curve_attack).__name__)
        base_eps = float(cfg.attack.eps)
        for factor in ev.eps_factors:
            curve_attack.eps = float(factor) * base_eps
            point = evaluate_attacks(
                classifier, (x, y), {"a": curve_attack}, progress=False, batch_size=batch_size
            )
            curve.append({"eps": curve_attack.eps, "accuracy": point.robust_accuracy["a"]})
        timings["eps_curve"] = time.perf_counter() - t0

    flags = run_sanity_checks(
        classifier,
        x[:256],
        y[:256],
        clean_acc=result.clean_accuracy,
        per_attack_acc=dict(result.robust_accuracy),
        eps_grid_acc={p["eps"]: p["accuracy"] for p in curve} or None,
    )

    if trained_steps == 0:
        flags.insert(0, untrained_flag())
        print(f"advtrain-train: WARNING {flags[0]}", file=sys.stderr)

    config_yaml = OmegaConf.to_yaml(cfg, resolve=True)
    (output_dir / "config_resolved.yaml").write_text(config_yaml)
    report: dict[str, Any] = {
        "schema_version": 1,
        "data": {"name": str(cfg.data.get("name", "data")), "split": "test"},
        "clean_accuracy": result.clean_accuracy,
        "robust_accuracy": robust,
        "threat_model": {
            "norm": str(cfg.attack.norm),
            "eps": float(cfg.attack.eps),
            "bounds": [float(b) for b in cfg.data.bounds],
        },
        "n_examples": len(y),
        "attacks": attack_info,
        "counts": result.counts,
        "per_class_accuracy": {
            name: [None if v != v else float(v) for v in values.tolist()]
            for name, values in result.per_class_accuracy(int(cfg.data.num_classes)).items()
        },
        "sanity_flags": [flag.to_dict() for flag in flags],
        "eps_curve": curve,
        "eps_curve_attack": curve_name,
        "checkpoint": {
            "path": str(weights_path),
            "sha256": sha256_file(weights_path),
            "source": checkpoint,
            "source_sha256": sha256_file(checkpoint) if checkpoint else None,
        },
        "config_sha256": sha256_text(config_yaml),
        "data_sha256": tensors_sha256(x, y),
        "seed": int(cfg.seed),
        "timings_s": dict(timings),
        "environment": environment(lightning_package(cfg)),
    }
    normalization = threat_normalization(cfg, data_normalization)
    if normalization is not None:  # eps is in pixels; say where the inputs are normalised
        report["threat_model"]["normalization"] = normalization
    if certified:
        report["certified"] = certified
    write_report(report, output_dir)
    return report
