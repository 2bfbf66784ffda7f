"""Every packaged recipe composes as published and runs end to end (fast_dev_run, synthetic data).

Each recipe is composed twice: as written (its header, threat model, method, model and
evaluation are checked against the paper it names), then with ``data=synthetic`` of the recipe's
own input shape, ``trainer=cpu``, ``++trainer.fast_dev_run=true`` and tiny evaluation settings,
and run through :func:`advtrain.cli.train.run` — no download, one training batch, a real report.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from advtrain.cli.config import CONF_DIR, coerce_fractions, compose
from advtrain.cli.train import run


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Any:
    """Tiny models on a shared CPU: one intra-op thread is faster than contended threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


RECIPES = sorted(p.stem for p in (CONF_DIR / "recipe").glob("*.yaml"))
PAPER_RECIPES = [r for r in RECIPES if r != "digits_quickstart"]

#: recipe -> (data, method, model target, eps, norm, evaluation entries)
EXPECTED: dict[str, tuple[str, str, str, float, str, set[str]]] = {
    "madry_mnist": (
        "mnist",
        "pgd_at",
        "SmallCNN",
        0.3,
        "linf",
        {"autoattack", "pgd-20", "fmn"},
    ),
    "trades_mnist": (
        "mnist",
        "trades",
        "SmallCNN",
        0.3,
        "linf",
        {"autoattack", "pgd-20", "fmn"},
    ),
    "ibp_mnist": ("mnist", "ibp", "SmallCNN", 0.3, "linf", {"pgd-50x5", "fmn", "cert:ibp"}),
    "crown_ibp_mnist": (
        "mnist",
        "crown_ibp",
        "SmallCNN",
        0.3,
        "linf",
        {"pgd-50x5", "fmn", "cert:ibp", "cert:crown_ibp"},
    ),
    "pgd_at_cifar10": (
        "cifar10",
        "pgd_at",
        "PreActResNet18",
        8 / 255,
        "linf",
        {"autoattack", "pgd-20", "fmn"},
    ),
    "trades_cifar10": (
        "cifar10",
        "trades",
        "WideResNet",
        0.031,
        "linf",
        {"autoattack", "pgd-20", "fmn"},
    ),
    "fast_at_cifar10": (
        "cifar10",
        "fast_at",
        "PreActResNet18",
        8 / 255,
        "linf",
        {"pgd-50x10", "fmn"},
    ),
    "free_at_cifar10": (
        "cifar10",
        "free_at",
        "WideResNet",
        8 / 255,
        "linf",
        {"autoattack", "pgd-20", "fmn"},
    ),
    "cohen_smoothing_cifar10": (
        "cifar10",
        "gaussian_noise",
        "PreActResNet18",
        0.5,
        "l2",
        {"cert:smoothing"},
    ),
}


def test_every_paper_recipe_is_checked() -> None:
    assert set(PAPER_RECIPES) == set(EXPECTED)


@pytest.mark.parametrize("name", PAPER_RECIPES)
def test_recipe_header_names_paper_figures_evaluation_and_time(name: str) -> None:
    text = (CONF_DIR / "recipe" / f"{name}.yaml").read_text()
    assert text.startswith("# @package _global_\n")
    header = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    assert "Published" in header and "%" in header, "the paper's figures"
    assert "Evaluation:" in header
    assert "Expected time on one GPU" in header
    assert any(year in header for year in ("2018", "2019", "2020")), "the paper's year"


@pytest.mark.parametrize("name", PAPER_RECIPES)
def test_recipe_composes_to_the_published_setting(name: str) -> None:
    cfg = compose(overrides=[f"recipe={name}"], output_dir="unused")
    coerce_fractions(cfg)
    data, method, model, eps, norm, evaluation = EXPECTED[name]
    assert cfg.data.name == data
    assert cfg.method.name == method
    assert cfg.model._target_.endswith(model)
    assert float(cfg.attack.eps) == pytest.approx(eps)
    assert cfg.attack.norm == norm
    entries = set((cfg.evaluation.get("attacks") or {}).keys())
    entries |= set(cfg.evaluation.eps_grid.get("min_norm") or {})  # the curve's attack (FMN)
    certify = cfg.evaluation.certify
    entries |= {f"cert:{m}" for m in certify.bounds.methods}
    entries |= {"cert:smoothing"} if certify.smoothing.sigma is not None else set()
    assert entries == evaluation
    assert cfg.trainer.accelerator == "gpu"


def test_recipe_specific_settings() -> None:
    madry = compose(overrides=["recipe=madry_mnist"], output_dir="unused")
    assert (madry.attack.steps, madry.attack.alpha, madry.module.lr) == (40, 0.01, 1e-4)
    trades = compose(overrides=["recipe=trades_cifar10"], output_dir="unused")
    assert trades.method.beta == 6.0 and trades.method.callback.loss.attack.alpha == 0.007
    assert (trades.model.depth, trades.model.widen_factor) == (34, 10)
    fast = compose(overrides=["recipe=fast_at_cifar10"], output_dir="unused")
    assert fast.module.lr_schedule == "cyclic" and fast.trainer.max_epochs == 15
    assert fast.attack.alpha == pytest.approx(10 / 255)  # 1.25 eps
    free = compose(overrides=["recipe=free_at_cifar10"], output_dir="unused")
    assert free.method.callback.replays == 8
    ibp = compose(overrides=["recipe=ibp_mnist"], output_dir="unused")
    schedules = ibp.method.callback.schedules
    assert schedules.eps._target_ == "advtrain.schedules.Smoothed"
    assert schedules.eps.end == pytest.approx(0.33)  # 1.1 x the test eps
    assert (schedules.kappa.start, schedules.kappa.end) == (1.0, 0.5)
    crown = compose(overrides=["recipe=crown_ibp_mnist"], output_dir="unused")
    beta = crown.method.callback.schedules.beta
    assert (beta.start, beta.end) == (1.0, 0.0) and crown.method.kappa_end == 0.0
    cohen = compose(overrides=["recipe=cohen_smoothing_cifar10"], output_dir="unused")
    cert = cohen.evaluation.certify.smoothing
    assert (cert.n0, cert.n, cert.alpha, cert.sigma) == (100, 100_000, 0.001, 0.25)


# -- end to end -----------------------------------------------------------------------------------
def _shrink(cfg: DictConfig) -> None:
    """Tiny attacks everywhere: one step, one restart; AutoAttack reduced to a 2-step APGD-CE."""

    def visit(node: Any) -> None:
        if isinstance(node, DictConfig):
            target = node.get("_target_")
            if target == "advtrain.attacks.AutoAttack":
                node.version = "custom"
                node.attacks = [
                    {
                        "_target_": "advtrain.attacks.APGD",
                        "eps": node.eps,
                        "norm": node.norm,
                        "steps": 2,
                        "bounds": node.bounds,
                    }
                ]
            if "sigma" in node and "n0" in node:  # randomized smoothing's CERTIFY
                node.n0, node.n, node.batch_size, node.alpha = 8, 32, 32, 0.1
            for key in ("steps", "restarts"):
                if key in node and not OmegaConf.is_interpolation(node, key):
                    node[key] = 1
            if "n_examples" in node and target is not None:
                node.n_examples = 8
            for key in node:
                visit(node._get_node(key))
        elif OmegaConf.is_list(node):
            for item in node:
                visit(item)

    with open_dict(cfg):
        for group in ("attack", "method", "evaluation", "callbacks"):
            visit(cfg[group])
        grid = cfg.evaluation.eps_grid
        grid.factors = [0.0, 1.0] if grid.factors else []


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_runs_end_to_end_on_synthetic_data(name: str, tmp_path: Path) -> None:
    shape = list(compose(overrides=[f"recipe={name}"], output_dir="unused").data.input_shape)
    overrides = [
        f"recipe={name}",
        "data=synthetic",
        f"data.input_shape=[{','.join(map(str, shape))}]",
        "data.module.size=40",
        "data.module.batch_size=4",
        "trainer=cpu",
        "++trainer.fast_dev_run=true",
        "trainer.enable_progress_bar=false",
        "evaluation.n_examples=4",
    ]
    cfg = compose(overrides=overrides, output_dir=str(tmp_path))
    if cfg.model._target_.endswith("SmallCNN"):
        cfg.model.width, cfg.model.hidden = 4, 16
    if cfg.model._target_.endswith("PreActResNet18"):
        cfg.model.width = 4
    if cfg.model._target_.endswith("WideResNet"):
        cfg.model.depth, cfg.model.widen_factor = 10, 1
    _shrink(cfg)

    report = run(cfg)

    assert report is not None
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["n_examples"] == 4
    assert saved["checkpoint"]["source"] is None, "fast_dev_run: the in-memory weights"
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())
    assert 0.0 <= saved["clean_accuracy"] <= 1.0
    for value in saved["robust_accuracy"].values():
        assert 0.0 <= value <= saved["clean_accuracy"]
    expected = EXPECTED.get(name, ("", "", "", 0.0, "", {"autoattack-rapid", "fmn"}))[-1]
    attacks = {e for e in expected if not e.startswith("cert:")}
    certificates = {e[5:] for e in expected if e.startswith("cert:")}
    assert set(saved["robust_accuracy"]) - {"worst_case"} == attacks
    certified = saved.get("certified") or {}
    ran = {m for m, res in (certified.get("bounds") or {}).items() if res["supported"]}
    ran |= {"smoothing"} if certified.get("smoothing") else set()
    assert ran == certificates
    summary = certified.get("summary") or {}
    for value in summary.values():
        assert value is None or (0.0 <= value <= 1.0 and not math.isnan(value))
    assert saved["threat_model"]["eps"] == pytest.approx(EXPECTED.get(name, (0, 0, 0, 0.2))[3])
    from advtrain.report.schema import validate_report

    assert validate_report(saved) == []
