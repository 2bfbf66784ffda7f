"""The threat model has one home, ``threat`` in conf/train.yaml: the attack group, the eps
schedule, the methods, robust validation and the evaluation read it, a run whose training attack
leaves it is refused, and a fraction (``threat.eps=8/255``) reaches every reader as a float."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from omegaconf import DictConfig, OmegaConf

from advtrain.attacks import FGSM, PGD
from advtrain.callbacks import AdversarialTraining, CatastrophicOverfittingGuard
from advtrain.callbacks.free import FreeAdversarialTraining
from advtrain.cli.config import CONF_DIR, coerce_fractions, compose
from advtrain.cli.errors import ConfigError
from advtrain.cli.threat_check import check_threat
from advtrain.cli.train import build_callbacks, run

EPS = 8 / 255


def _composed(*overrides: str, output_dir: str = "unused") -> DictConfig:
    cfg = compose(overrides=list(overrides), output_dir=output_dir)
    coerce_fractions(cfg)
    return cfg


def _eps_nodes(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """(path, eps) of every ``_target_`` node with an ``eps`` (resolved)."""
    if isinstance(node, dict):
        if "_target_" in node and "eps" in node:
            yield path, node["eps"]
        for key, value in node.items():
            yield from _eps_nodes(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _eps_nodes(value, f"{path}[{i}]")


# -- the threat node ---------------------------------------------------------------------------
def test_the_threat_node_holds_the_threat_model() -> None:
    cfg = _composed()
    assert OmegaConf.to_container(cfg.threat, resolve=True) == {
        "norm": "linf",
        "eps": 0.2,
        "bounds": [0.0, 1.0],
        "normalization": "auto",
    }
    assert OmegaConf.is_interpolation(cfg.threat, "bounds")  # the data's bounds
    for node in (cfg.attack, cfg.callbacks.robust_evaluation.attack):
        assert (node.eps, node.norm, list(node.bounds)) == (0.2, "linf", [0.0, 1.0])
    assert cfg.schedule.eps.end == 0.2
    # the callbacks take the threat model's normalisation ("auto": found in the data, as before)
    assert cfg.method.callback.normalization == "auto"
    assert cfg.callbacks.robust_evaluation.normalization == "auto"


def test_threat_overrides_reach_every_reader() -> None:
    cfg = _composed("threat.norm=l2", "threat.eps=0.5", "data.bounds=[-1.0,1.0]")
    for path, eps in _eps_nodes(OmegaConf.to_container(cfg, resolve=True)):
        assert eps in (0.5, 0.0), path  # 0.0: a ramp's start
    assert (cfg.attack.norm, list(cfg.attack.bounds)) == ("l2", [-1.0, 1.0])
    assert cfg.callbacks.robust_evaluation.attack.norm == "l2"
    normalised = _composed("threat.normalization=[[0.5],[0.25]]")
    (callback,) = build_callbacks(normalised)[:1]
    assert isinstance(callback, AdversarialTraining)
    assert callback.normalization is not None and callback.normalization.std == (0.25,)


def test_recipes_set_the_threat_node() -> None:
    recipes = sorted(p.stem for p in (CONF_DIR / "recipe").glob("*.yaml"))
    for name in recipes:
        text = (CONF_DIR / "recipe" / f"{name}.yaml").read_text()
        assert "\nthreat:\n  eps:" in text, name
        cfg = compose(overrides=[f"recipe={name}"], output_dir="unused")
        assert float(cfg.threat.eps) == pytest.approx(float(cfg.attack.eps))
        assert OmegaConf.is_interpolation(cfg.attack, "eps"), f"{name} sets attack.eps"
        assert OmegaConf.is_interpolation(cfg.attack, "norm"), f"{name} sets attack.norm"
    smoothing = compose(overrides=["recipe=cohen_smoothing_cifar10"], output_dir="unused")
    assert (smoothing.threat.norm, smoothing.threat.eps) == ("l2", 0.5)


# -- one mechanism for fractions -------------------------------------------------------------
@pytest.mark.parametrize("method", ["pgd_at", "trades", "fast_at", "free_at", "ibp"])
def test_a_fractional_threat_eps_reaches_attack_schedule_methods_and_evaluation(
    method: str,
) -> None:
    cfg = _composed(f"method={method}", "threat.eps=8/255")
    assert cfg.threat.eps == pytest.approx(EPS) and cfg.attack.eps == pytest.approx(EPS)
    check_threat(cfg)
    factor = float(cfg.method.get("eps_train_factor", 1.0))
    found = dict(_eps_nodes(OmegaConf.to_container(cfg, resolve=True)))
    evaluation = {p: e for p, e in found.items() if p.startswith("evaluation.")}
    assert evaluation, "the evaluation's attacks and certificates"
    for path, eps in found.items():
        assert any(math.isclose(eps, v) for v in (EPS, EPS * factor, 0.0)), (path, eps)
    assert all(math.isclose(e, EPS) for e in evaluation.values()), evaluation
    assert cfg.callbacks.robust_evaluation.attack.eps == pytest.approx(EPS)
    schedule = (cfg.method.callback or {}).get("schedules") or {}
    if "eps" in schedule:  # the ramp ends at the training radius
        assert schedule.eps.end == pytest.approx(EPS * factor)
    callbacks = build_callbacks(cfg)
    trainer = callbacks[0]
    if isinstance(trainer, FreeAdversarialTraining):
        assert trainer.eps == pytest.approx(EPS)
    elif isinstance(trainer.attack, (PGD, FGSM)):
        assert trainer.attack.eps == pytest.approx(EPS * factor)
    for guard in (cb for cb in callbacks if isinstance(cb, CatastrophicOverfittingGuard)):
        assert guard.attack is not None and guard.attack.eps == pytest.approx(EPS)


def test_recipe_fractions_and_command_line_fractions_agree() -> None:
    """``${div:8,255}`` in a recipe and ``threat.eps=8/255`` on the command line give the same
    resolved settings everywhere."""
    recipe = _composed("recipe=pgd_at_cifar10")  # threat.eps: ${div:8,255}
    command_line = _composed("recipe=pgd_at_cifar10", "threat.eps=8/255")
    assert recipe.threat.eps == pytest.approx(EPS)
    keys = ["threat", "attack", "schedule", "method", "callbacks", "evaluation"]
    left, right = (OmegaConf.to_container(c, resolve=True) for c in (recipe, command_line))
    assert _same_numbers({k: left[k] for k in keys}, {k: right[k] for k in keys})


def _same_numbers(x: Any, y: Any) -> bool:
    if isinstance(x, dict):
        return (
            isinstance(y, dict)
            and x.keys() == y.keys()
            and all(_same_numbers(x[k], y[k]) for k in x)
        )
    if isinstance(x, list):
        return isinstance(y, list) and len(x) == len(y) and all(map(_same_numbers, x, y))
    if isinstance(x, float) and isinstance(y, float):
        return math.isclose(x, y, rel_tol=1e-12)
    return bool(x == y)


# -- an attack off the threat model ------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "said", "fix"),
    [
        (["attack.eps=0.1"], "attack.eps=0.1 ", "threat.eps=0.1 "),
        (["attack.norm=l2"], "attack.norm=l2 ", "threat.norm=l2 "),
        (["attack.eps=8/255"], f"attack.eps={EPS} ", f"threat.eps={EPS} "),
        (["method=fast_at", "attack=fgsm", "attack.eps=0.3"], "attack.eps=0.3 ", "threat.eps=0.3 "),
        (["threat.eps=0.1", "attack.eps=0.2"], "attack.eps=0.2 ", "threat.eps=0.2 "),
    ],
)
def test_an_attack_off_the_threat_model_is_refused_before_training(
    overrides: list[str], said: str, fix: str, tmp_path: Path
) -> None:
    cfg = compose(overrides=[*overrides, "trainer.max_epochs=1"], output_dir=str(tmp_path))
    with pytest.raises(ValueError) as info:
        run(cfg)
    assert isinstance(info.value, ConfigError)
    message = str(info.value)
    assert said in message and f"Set {fix}instead" in message, message
    assert "differs from the threat model's" in message
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["attack.eps=0.2"],  # the threat model's own value
        ["threat.eps=8/255", "attack.eps=${div:8,255}"],
        ["threat.eps=8/255", "attack.eps=8/255"],
        ["threat.norm=l2", "attack.norm=l2"],
        ["recipe=fast_at_cifar10"],
        ["recipe=cohen_smoothing_cifar10"],
    ],
)
def test_an_attack_at_the_threat_model_passes(overrides: list[str]) -> None:
    check_threat(_composed(*overrides))


def test_the_console_script_names_threat_eps(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("advtrain-train")
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [str(exe), "attack.eps=0.1", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Set threat.eps=0.1 instead" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


# -- conf/callbacks: one file per callback; methods write only their own node -------------------
def test_each_callback_has_its_own_file() -> None:
    folder = CONF_DIR / "callbacks"
    default = OmegaConf.load(folder / "default.yaml")
    assert set(default) == {"defaults"}, "default.yaml only lists the callbacks"
    cfg = compose(overrides=[], output_dir="unused")
    assert list(cfg.callbacks) == list(default.defaults)
    for name in default.defaults:
        assert list(OmegaConf.load(folder / f"{name}.yaml")) == [name]
    fast = compose(overrides=["method=fast_at"], output_dir="unused")
    assert list(fast.callbacks) == ["guard", *default.defaults]  # from callbacks/guard.yaml
    assert list(OmegaConf.load(folder / "guard.yaml")) == ["guard"]


def test_method_files_write_only_their_own_node() -> None:
    for path in sorted((CONF_DIR / "method").glob("*.yaml")):
        assert "@package" not in path.read_text(), path.name
        node = OmegaConf.load(path)
        others = {"method", "attack", "schedule", "callbacks", "trainer", "evaluation", "threat"}
        assert others.isdisjoint(node), path.name  # (its own `module`: optimizer settings)
    # the method's own optimizer settings reach the module unless a recipe sets them
    fast = compose(overrides=["method=fast_at"], output_dir="unused")
    assert (fast.module.lr, fast.module.lr_schedule) == (5.0e-3, "cyclic")
    ibp = compose(overrides=["method=ibp"], output_dir="unused")
    assert (ibp.module.lr, ibp.module.lr_schedule, list(ibp.module.milestones)) == (
        2.0e-3,
        "multistep",
        [0.75],
    )
    paper = compose(overrides=["recipe=fast_at_cifar10"], output_dir="unused")
    assert (paper.module.optimizer, paper.module.lr) == ("sgd", 0.2)
    plain = compose(overrides=["method=pgd_at"], output_dir="unused")
    assert (plain.module.lr, plain.module.lr_schedule) == (1.0e-3, "none")
