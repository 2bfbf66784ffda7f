"""The evaluation a run ends with: clean and robust accuracy, the eps curve, and the report."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from advtrain.attacks.base import Attack
from advtrain.cli.certificates import certified_section
from advtrain.data.base import tensors_sha256
from advtrain.report import environment, sha256_file, sha256_text, write_report


def load_lightning_weights(module: pl.LightningModule, checkpoint: str) -> None:
    """Loads a Lightning checkpoint's weights into ``module`` with ``weights_only=True``."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    module.load_state_dict(state["state_dict"])


@torch.no_grad()
def _predict(model: nn.Module, x: Tensor, batch_size: int) -> Tensor:
    return torch.cat([model(x[i : i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])


def robust_correct(
    model: nn.Module, attack: Attack, x: Tensor, y: Tensor, batch_size: int
) -> Tensor:
    """Per-example boolean: still classified correctly after ``attack`` (batched)."""
    out = []
    for i in range(0, len(x), batch_size):
        xb, yb = x[i : i + batch_size], y[i : i + batch_size]
        x_adv = attack(model, xb, yb)
        with torch.no_grad():
            out.append(model(x_adv).argmax(1) == yb)
    return torch.cat(out)


def evaluate_checkpoint(
    cfg: DictConfig,
    module: pl.LightningModule,
    datamodule: Any,
    checkpoint: str | None,
    output_dir: Path,
    timings: dict[str, float],
) -> dict[str, Any]:
    """Evaluates the best checkpoint on the test split and writes the report."""
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
    clean = _predict(classifier, x, batch_size) == y
    robust: dict[str, float] = {}
    worst = clean.clone()
    for name, node in (ev.get("attacks") or {}).items():
        attack = instantiate(node, _convert_="all")
        correct = robust_correct(classifier, attack, x, y, batch_size) & clean
        robust[str(name)] = float(correct.float().mean())
        worst &= correct
    if len(robust) > 1:
        robust["worst_case"] = float(worst.float().mean())
    # Certified accuracy (IBP/CROWN bounds, randomized smoothing): advtrain.cli.certificates.
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
            acc = robust_correct(classifier, curve_attack, x, y, batch_size) & clean
            curve.append({"eps": curve_attack.eps, "accuracy": float(acc.float().mean())})
        timings["eps_curve"] = time.perf_counter() - t0

    config_yaml = OmegaConf.to_yaml(cfg, resolve=True)
    (output_dir / "config_resolved.yaml").write_text(config_yaml)
    report: dict[str, Any] = {
        "schema_version": 1,
        "data": {"name": str(cfg.data.get("name", "data")), "split": "test"},
        "clean_accuracy": float(clean.float().mean()),
        "robust_accuracy": robust,
        "threat_model": {
            "norm": str(cfg.attack.norm),
            "eps": float(cfg.attack.eps),
            "bounds": [float(b) for b in cfg.data.bounds],
        },
        "n_examples": len(y),
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
        "environment": environment(),
    }
    if certified:
        report["certified"] = certified
    write_report(report, output_dir)
    return report
