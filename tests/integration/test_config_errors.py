"""Configuration mistakes fail early with messages that say what to change.

Structured schemas (advtrain.cli.schemas) validate the attack, schedule and method groups at
composition; run() checks every ``_target_`` node and the trainer before building anything.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from advtrain.cli.config import CONF_DIR, compose
from advtrain.cli.schemas import (
    SCHEMAS,
    ConfigError,
    LinearScheduleConfig,
    PGDConfig,
    check_config,
    check_targets,
    check_trainer,
    schema_fields,
)
from advtrain.cli.train import run


def _error(overrides: list[str]) -> str:
    with pytest.raises(ConfigError) as info:
        compose(overrides=overrides, output_dir="unused")
    return str(info.value)


def test_attack_key_typo_names_the_valid_keys() -> None:
    message = _error(["attack.epss=0.1"])
    assert "'attack.epss' is not a valid key" in message
    assert "Did you mean 'eps'?" in message
    for key in ("eps", "norm", "steps", "alpha", "restarts", "random_start", "bounds"):
        assert key in message
    assert "PGDConfig" in message


def test_valid_keys_follow_the_chosen_option() -> None:
    message = _error(["attack=fgsm", "~recipe", "attack.steps=3"])
    assert "FGSMConfig" in message and "restarts" not in message and "random_start" in message


def test_error_in_a_config_file_names_the_file() -> None:
    # madry_mnist sets attack.steps (PGD-40), which FGSM does not take.
    message = _error(["recipe=madry_mnist", "attack=fgsm"])
    assert "'attack.steps' is not a valid key (set in recipe/madry_mnist.yaml)" in message


def test_method_and_schedule_typos_name_the_valid_keys() -> None:
    message = _error(["method=trades", "method.betaa=3"])
    assert "Did you mean 'beta'?" in message and "callback" in message
    message = _error(["schedule.eps.ned=0.1"])
    assert "schedule.eps" in message and "end" in message and "warmup" in message


def test_wrong_type_is_refused_at_composition() -> None:
    message = _error(["attack.steps=2.5"])
    assert "attack.steps" in message and "Integer" in message


def test_fractions_still_compose_for_eps() -> None:
    cfg = compose(overrides=["threat.eps=8/255"], output_dir="unused")
    assert cfg.threat.eps == pytest.approx(8 / 255)  # coerced as the config is composed


def test_unknown_recipe_lists_the_recipes() -> None:
    message = _error(["recipe=madry_mnst"])
    assert "unknown recipe 'madry_mnst'" in message
    for name in ("madry_mnist", "trades_cifar10", "digits_quickstart"):
        assert name in message


def test_added_key_is_refused_before_training(tmp_path: Path) -> None:
    cfg = compose(overrides=["+attack.epss=0.1"], output_dir=str(tmp_path))
    with pytest.raises(ConfigError, match=r"attack\.epss.*valid keys of attack"):
        run(cfg)
    assert not (tmp_path / "report.json").exists()


def test_unknown_constructor_argument_anywhere_is_refused(tmp_path: Path) -> None:
    overrides = ["evaluation=standard", "+evaluation.attacks.pgd-50x5.stepz=3"]
    cfg = compose(overrides=overrides, output_dir=str(tmp_path))
    with pytest.raises(ConfigError) as info:
        check_config(cfg)
    message = str(info.value)
    assert "evaluation.attacks.pgd-50x5.stepz" in message and "advtrain.attacks.PGD" in message
    assert "steps" in message
    # The eps curve's minimum-norm attack (the default evaluation's) is checked the same way.
    cfg = compose(overrides=["+evaluation.eps_grid.min_norm.fmn.stepz=3"], output_dir="unused")
    with pytest.raises(ConfigError) as info:
        check_config(cfg)
    message = str(info.value)
    assert "evaluation.eps_grid.min_norm.fmn.stepz" in message and "advtrain.attacks.FMN" in message


def test_ddp_with_one_device_says_what_to_use(tmp_path: Path) -> None:
    cfg = compose(overrides=["trainer=ddp", "trainer.devices=1"], output_dir=str(tmp_path))
    with pytest.raises(ConfigError) as info:
        run(cfg)
    message = str(info.value)
    assert "trainer=cpu" in message and "devices>=2" in message
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize("factor", ["0", "-0.5", "1.5"])
def test_epochs_factor_outside_zero_one_is_refused(factor: str, tmp_path: Path) -> None:
    cfg = compose(
        overrides=["method=fast_at", f"method.max_epochs_factor={factor}"],
        output_dir=str(tmp_path),
    )
    with pytest.raises(ConfigError, match=r"method\.max_epochs_factor must be in \(0, 1\]"):
        run(cfg)
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize(
    ("trainer", "ok"),
    [
        ({"strategy": "ddp", "devices": 2}, True),
        ({"strategy": "ddp", "devices": "2"}, True),
        ({"strategy": "ddp", "devices": [0, 1]}, True),
        ({"strategy": "ddp", "devices": 1, "num_nodes": 2}, True),
        ({"strategy": "auto", "devices": 1}, True),
        ({"devices": 1}, True),
        ({"strategy": "ddp", "devices": 1}, False),
        ({"strategy": "ddp_spawn", "devices": "1"}, False),
        ({"strategy": "ddp", "devices": [3]}, False),
    ],
)
def test_check_trainer(trainer: dict[str, object], ok: bool) -> None:
    if ok:
        check_trainer(trainer)
    else:
        with pytest.raises(ConfigError, match="trainer=cpu"):
            check_trainer(trainer)


# -- schemas stay in step with the code and the YAML ----------------------------------------------
def _signature_defaults(cls: type) -> dict[str, object]:
    return {
        name: p.default
        for name, p in inspect.signature(cls).parameters.items()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }


@pytest.mark.parametrize(
    "schema", [*SCHEMAS["attack"].values(), LinearScheduleConfig], ids=lambda s: s.__name__
)
def test_target_schemas_mirror_the_constructor(schema: type) -> None:
    from hydra.utils import get_class

    target = get_class(schema._target_)  # type: ignore[attr-defined]
    defaults = _signature_defaults(target)
    fields = {f.name: f for f in dataclasses.fields(schema) if f.name != "_target_"}
    assert set(fields) == set(defaults), schema.__name__
    for name, f in fields.items():
        default = defaults[name]
        if default is inspect.Parameter.empty:
            assert f.default is dataclasses.MISSING or str(f.default) == "???", name
        elif f.default_factory is not dataclasses.MISSING:
            assert list(f.default_factory()) == list(default), name  # type: ignore[arg-type]
        else:
            assert f.default == default, name


@pytest.mark.parametrize(
    ("group", "option"), [(g, o) for g, options in SCHEMAS.items() for o in options]
)
def test_every_schema_option_composes_and_is_typed(group: str, option: str) -> None:
    if not (CONF_DIR / group / f"{option}.yaml").exists():
        pytest.skip(f"conf/{group}/{option}.yaml not written yet")
    # ~recipe: the default recipe (digits_quickstart) sets attack.steps, which FGSM lacks.
    cfg = compose(overrides=[f"{group}={option}", "~recipe"], output_dir="unused")
    assert OmegaConf.get_type(cfg[group]) is SCHEMAS[group][option]
    assert set(cfg[group].keys()) <= set(schema_fields(SCHEMAS[group][option]))


@pytest.mark.parametrize(
    "overrides",
    [
        ["model=preact_resnet18", "data=synthetic", "data.input_shape=[3,32,32]"],
        ["model=wide_resnet", "data=synthetic", "data.input_shape=[3,32,32]"],
        ["method=ibp"],
        ["method=crown_ibp"],
        ["method=gaussian_noise"],
        ["evaluation=pgd"],
        ["evaluation=autoattack"],
        ["evaluation=rapid"],
        ["evaluation=smoothing"],
        ["evaluation=ibp"],
        ["evaluation=crown"],
        ["logger=tensorboard"],
        ["data=synthetic"],
    ],
    ids=lambda o: o[0],
)
def test_new_group_options_name_real_constructor_arguments(overrides: list[str]) -> None:
    cfg = compose(overrides=overrides, output_dir="unused")
    check_targets(cfg)


@pytest.mark.parametrize(
    ("name", "shape", "target"),
    [
        ("mnist", [1, 28, 28], "advtrain.data.MNISTDataModule"),
        ("cifar10", [3, 32, 32], "advtrain.data.CIFAR10DataModule"),
    ],
)
def test_dataset_configs(name: str, shape: list[int], target: str) -> None:
    cfg = compose(overrides=[f"data={name}"], output_dir="unused")
    assert list(cfg.data.input_shape) == shape and list(cfg.data.bounds) == [0.0, 1.0]
    assert cfg.data.module._target_ == target and cfg.data.num_classes == 10
    assert len(cfg.data.mean) == len(cfg.data.std) == shape[0]


def test_schema_defaults_match_pgd() -> None:
    assert PGDConfig().eps == pytest.approx(8 / 255) and PGDConfig().bounds == [0.0, 1.0]


def test_console_script_prints_the_valid_keys(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("advtrain-train")
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [str(exe), "attack.epss=0.1", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode != 0
    assert "valid keys of attack (PGDConfig)" in proc.stderr, proc.stderr[-2000:]
    assert "Did you mean 'eps'?" in proc.stderr
    assert not (tmp_path / "run" / "report.json").exists()
