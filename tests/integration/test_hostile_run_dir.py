"""A run folder someone else delivered is data: ``advtrain-eval run_dir=DIR`` never runs code its
config names (the red-team payloads: a pickle through ``torch.load``, ``builtins.open`` on a
victim file, an attribute chain through an allowed module), unless the user allows the target."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf

from advtrain.cli.config import compose
from advtrain.cli.evaluate import run
from advtrain.cli.trust import UntrustedConfigError, check_config_targets
from advtrain.models import SmallCNN

WIDTH, HIDDEN = 8, 32


class Payload:
    """Unpickling this object runs a shell command (what a hostile pickle does)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def run_folder(
    tmp_path: Path,
    data_module: dict[str, Any] | None = None,
    data_name: str | None = None,
    **model: Any,
) -> Path:
    """An advtrain-train-like run folder (config_resolved.yaml, model.pt), optionally edited."""
    run_dir = tmp_path / "delivered_run"
    run_dir.mkdir(exist_ok=True)
    cfg = compose("train", [f"model.width={WIDTH}", f"model.hidden={HIDDEN}"], str(run_dir))
    plain = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(plain, dict)
    if data_module is not None:
        plain["data"]["module"] = data_module
    if data_name is not None:
        plain["data"]["name"] = data_name
    plain["model"].update(model)
    (run_dir / "config_resolved.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(plain)))
    torch.manual_seed(0)
    torch.save(SmallCNN(width=WIDTH, hidden=HIDDEN).state_dict(), run_dir / "model.pt")
    return run_dir


def evaluate(run_dir: Path, tmp_path: Path, *extra: str) -> dict[str, Any]:
    overrides = [
        f"run_dir={run_dir}",
        "n_examples=8",
        "attacks=pgd",
        "attacks.pgd-50x5.steps=1",
        "attacks.pgd-50x5.restarts=1",
        "eps_grid.factors=[]",
        "certify.bounds.methods=[]",
        "sanity.n_examples=8",
        "progress=false",
        "ledger=null",
        *extra,
    ]
    return run(compose("eval", overrides, str(tmp_path / "eval")))


def test_a_pickle_payload_through_torch_load_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "payload_ran"
    payload = tmp_path / "payload.pkl"
    payload.write_bytes(pickle.dumps(Payload(marker)))
    hostile = {"_target_": "torch.load", "f": str(payload), "weights_only": False}
    run_dir = run_folder(tmp_path, data_module=hostile)
    with pytest.raises(UntrustedConfigError) as info:
        evaluate(run_dir, tmp_path)  # trust_checkpoint=false (the default) is not the point
    assert not marker.exists(), "the pickle's payload ran"
    message = str(info.value)
    assert "data.module._target_" in message and "'torch.load'" in message
    assert "allow_targets=['torch.load']" in message and "trust_config=true" in message


def test_builtins_open_on_a_victim_file_never_runs(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    hostile = {"_target_": "builtins.open", "file": str(victim), "mode": "w"}
    with pytest.raises(UntrustedConfigError, match=r"builtins\.open"):
        evaluate(run_folder(tmp_path, data_module=hostile), tmp_path)
    assert victim.read_text() == "precious"


def test_an_attribute_chain_through_an_allowed_module_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "payload_ran"
    payload = tmp_path / "payload.pkl"
    payload.write_bytes(pickle.dumps(Payload(marker)))
    # matches "advtrain.models.*" as text, but resolves to torch.load
    hostile = {"_target_": "advtrain.models.normalize.torch.load", "f": str(payload)}
    with pytest.raises(UntrustedConfigError, match=r"resolves to torch\.serialization\.load"):
        evaluate(run_folder(tmp_path, data_module=hostile), tmp_path)
    assert not marker.exists()


def test_a_hidden_target_deeper_in_the_node_is_found(tmp_path: Path) -> None:
    node = OmegaConf.create(
        {
            "module": {
                "_target_": "advtrain.data.DigitsDataModule",
                "extra": [{"x": {"_target_": "os.system", "command": "true"}}],
            }
        }
    )
    with pytest.raises(UntrustedConfigError, match=r"module\.extra\[0\]\.x\._target_"):
        check_config_targets(node, "test")


class TinyNet(torch.nn.Module):
    """A user's own architecture, outside advtrain (allowed with allow_targets)."""

    def __init__(self, width: int = WIDTH, hidden: int = HIDDEN, **kwargs: Any) -> None:
        super().__init__()
        self.net = SmallCNN(width=width, hidden=hidden, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # type: ignore[no-any-return]


def test_the_user_can_allow_a_target_or_trust_the_folder(tmp_path: Path) -> None:
    run_dir = run_folder(tmp_path, _target_=f"{__name__}.TinyNet")
    weights = {f"net.{k}": v for k, v in torch.load(run_dir / "model.pt").items()}
    torch.save(weights, run_dir / "model.pt")
    with pytest.raises(UntrustedConfigError, match="TinyNet"):
        evaluate(run_dir, tmp_path)
    report = evaluate(run_dir, tmp_path, f"allow_targets=[{__name__}.*]")
    assert report["n_examples"] == 8
    with pytest.warns(UserWarning, match="UNSAFE CONFIG"):
        evaluate(run_dir, tmp_path, "trust_config=true")
