"""advtrain-eval end to end on a quickly PGD-trained digits model: report, audit, ledger, resume.

One session-scoped model (a SmallCNN trained with PGD-AT by a hand-written loop in about a second)
and one session-scoped evaluation are shared by most tests; every evaluation is shrunk (few
examples, few attack steps) to keep the file well under a minute on two cores.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advtrain.attacks import PGD
from advtrain.checkpoints import (
    CheckpointMismatchError,
    UnsafeCheckpointError,
    load_weights,
)
from advtrain.cli.config import compose
from advtrain.cli.eval_state import StateMismatchError
from advtrain.cli.evaluate import main, run
from advtrain.data import DigitsDataModule, tensors_sha256
from advtrain.models import SmallCNN
from advtrain.report import sha256_file, sha256_text
from advtrain.report.schema import validate_report
from advtrain.report.writer import result_rows

WIDTH, HIDDEN, N = 8, 32, 48

# Shrunk evaluation: PGD-5 (1 restart), a 3-point eps grid, IBP and CROWN at eps only, and
# randomized smoothing with few samples on 16 examples.
FAST = [
    f"model.width={WIDTH}",
    f"model.hidden={HIDDEN}",
    "threat.eps=0.2",
    f"n_examples={N}",
    "batch_size=16",
    "attacks=pgd",
    "attacks.pgd-50x5.steps=5",
    "attacks.pgd-50x5.restarts=1",
    "eps_grid.factors=[0,0.5,1]",
    "certify.bounds.methods=[ibp,crown]",
    "certify.bounds.on_eps_grid=false",
    "certify.smoothing.sigma=0.25",
    "certify.smoothing.n0=16",
    "certify.smoothing.n=128",
    "certify.smoothing.batch_size=256",
    "certify.smoothing.n_examples=16",
    "sanity.n_examples=32",
    "progress=false",
]


def _train_pgd_at(seed: int = 0) -> SmallCNN:
    """PGD-AT (Madry et al. 2018) on the digits training split: 4 epochs, PGD-3 after epoch 1."""
    torch.manual_seed(seed)
    dm = DigitsDataModule()
    dm.setup()
    x, y = dm.train_set.tensors  # type: ignore[union-attr]
    model = SmallCNN(width=WIDTH, hidden=HIDDEN)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    attack = PGD(eps=0.2, steps=3, seed=seed)
    for epoch in range(4):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 64):
            xb, yb = x[perm[i : i + 64]], y[perm[i : i + 64]]
            x_in = attack(model, xb, yb) if epoch > 0 else xb
            loss = F.cross_entropy(model(x_in), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("eval_cli")
    model = _train_pgd_at()
    ckpt = root / "model.pt"
    torch.save(model.state_dict(), ckpt)
    return {"root": root, "model": model, "ckpt": ckpt}


@pytest.fixture(scope="session")
def evaluated(trained: dict[str, Any]) -> dict[str, Any]:
    root = trained["root"]
    out = root / "run"
    ledger = root / "ledger.jsonl"
    cfg = compose("eval", [*FAST, f"ckpt_path={trained['ckpt']}", f"ledger={ledger}"], str(out))
    report = run(cfg)
    return {"out": out, "report": report, "ledger": ledger, "saved": _load(out)}


def _load(out: Path) -> dict[str, Any]:
    return json.loads((out / "report.json").read_text())


def _numbers(report: dict[str, Any]) -> dict[str, Any]:
    return {
        k: report[k]
        for k in ("clean_accuracy", "robust_accuracy", "counts", "eps_grid", "per_class")
    } | {"certified": {k: report["certified"][k] for k in ("summary", "gap")}}


# -- the report ---------------------------------------------------------------------------------
def test_report_json_md_html_and_figures(evaluated: dict[str, Any]) -> None:
    out, saved = evaluated["out"], evaluated["saved"]
    assert validate_report(saved) == []
    assert saved["kind"] == "evaluation" and saved["n_examples"] == N
    assert saved["threat_model"] == {"norm": "linf", "eps": 0.2, "bounds": [0.0, 1.0]}
    # A PGD-trained model: clean accuracy high, robust accuracy clearly below it.
    assert saved["clean_accuracy"] > 0.7
    assert 0.0 <= saved["robust_accuracy"]["worst_case"] < saved["clean_accuracy"]
    import matplotlib.image as mpimg

    assert set(saved["figures"].values()) == {
        "robust_vs_eps.png",
        "certified_vs_radius.png",
        "gap.png",
        "per_class.png",
    }
    html = (out / "report.html").read_text()
    for fname in saved["figures"].values():
        png = out / fname
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
        pixels = mpimg.imread(png)
        assert pixels.std() > 0.05  # not a blank canvas
    # Self-contained: every figure embedded, no network assets.
    assert html.count('src="data:image/png;base64,') == len(saved["figures"])
    assert "http://" not in html and "https://" not in html
    assert "<link" not in html and "<script" not in html


def test_numbers_agree_in_json_md_and_html(evaluated: dict[str, Any]) -> None:
    out, saved = evaluated["out"], evaluated["saved"]
    counts, n = saved["counts"], saved["counts"]["n"]
    assert saved["clean_accuracy"] == counts["clean"] / n
    for name, acc in saved["robust_accuracy"].items():
        assert acc == counts[name] / n
        assert acc <= saved["clean_accuracy"]
    grid = saved["eps_grid"]
    assert grid["eps"] == [0.0, 0.1, 0.2]
    assert grid["accuracy"]["worst_case"][0] == saved["clean_accuracy"]  # eps = 0
    assert grid["accuracy"]["worst_case"][-1] == saved["robust_accuracy"]["worst_case"]
    md = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    rows = result_rows(saved)
    assert len(rows) >= 3 + 2  # clean, pgd, worst case, ibp, crown, smoothing radii
    for label, acc, count in rows:
        pct = "n/a" if acc is None else f"{100 * acc:.1f}%"
        assert f"| {label} | {pct} | {count} |" in md, label
        assert f"<td>{label}</td><td>{pct}</td><td>{count}</td>" in html, label
    per_class = saved["per_class"]
    assert sum(per_class["support"]) == n
    for i, cls in enumerate(per_class["classes"]):
        acc = per_class["accuracy"]["clean"][i]
        assert f"| {cls} | {per_class['support'][i]} | {100 * acc:.1f}% |" in md


def test_certified_sections_and_gap(evaluated: dict[str, Any]) -> None:
    cert = evaluated["saved"]["certified"]
    robust = evaluated["saved"]["robust_accuracy"]["worst_case"]
    for method in ("ibp", "crown"):
        res = cert["bounds"][method]
        assert res["supported"] and res["eps"] == [0.2]
        # Verified is a lower bound on the true robust accuracy; attacks give an upper bound.
        assert res["at_threat_eps"] <= robust
    smoothing = cert["smoothing"]
    assert smoothing["n_examples"] == 16 and smoothing["sigma"] == 0.25
    assert smoothing["accuracy"] == sorted(smoothing["accuracy"], reverse=True)
    assert smoothing["at_threat_eps"] is None  # linf threat: smoothing certifies L2
    best = max(cert["bounds"][m]["at_threat_eps"] for m in ("ibp", "crown"))
    assert cert["gap"]["gap"] == pytest.approx(robust - best) and cert["gap"]["gap"] >= 0


def test_audit_hashes_and_environment(evaluated: dict[str, Any], trained: dict[str, Any]) -> None:
    saved, out = evaluated["saved"], evaluated["out"]
    assert saved["checkpoint"]["sha256"] == sha256_file(trained["ckpt"])
    assert saved["checkpoint"]["loaded_with"] == "weights_only"
    assert saved["config_sha256"] == sha256_text((out / "config_resolved.yaml").read_text())
    x, y = DigitsDataModule().test_tensors(N)
    assert saved["data_sha256"] == tensors_sha256(x, y)
    env = saved["environment"]
    assert env["torch"] == torch.__version__ and "pytorch_lightning" in env
    assert env["device"] == "cpu"
    assert env["git_commit"] is None or re.fullmatch(r"[0-9a-f]{40}", env["git_commit"])
    settings = saved["settings"]
    assert settings["seed"] == 0 and settings["n_examples"] == N
    assert settings["attacks"]["pgd-50x5"]["steps"] == 5


# -- ledger -------------------------------------------------------------------------------------
def _verify(ledger: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        main(["verify", str(ledger)])
    captured = capsys.readouterr()
    return int(exc.value.code or 0), captured.out + captured.err


def test_untouched_ledger_verifies(
    evaluated: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    code, text = _verify(evaluated["ledger"], capsys)
    assert code == 0, text
    assert "OK" in text and "5 files" in text


def test_changed_checkpoint_byte_or_edited_entry_fails_verify(
    evaluated: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = evaluated["ledger"].parent
    # One byte of the checkpoint changed (on a copy of the whole tree: relative paths hold).
    copy1 = tmp_path / "one"
    shutil.copytree(root, copy1)
    ckpt = copy1 / "model.pt"
    data = bytearray(ckpt.read_bytes())
    data[len(data) // 2] ^= 0x01
    ckpt.write_bytes(bytes(data))
    code, text = _verify(copy1 / "ledger.jsonl", capsys)
    assert code == 1
    assert "file checkpoint" in text and "model.pt" in text and "altered" in text
    assert "1 problem(s)" in text  # only the checkpoint is named
    # One edited ledger entry (a better-looking clean accuracy).
    copy2 = tmp_path / "two"
    shutil.copytree(root, copy2)
    ledger = copy2 / "ledger.jsonl"
    entry = json.loads(ledger.read_text().splitlines()[0])
    entry["summary"]["clean_accuracy"] = 0.99
    ledger.write_text(json.dumps(entry) + "\n")
    code, text = _verify(ledger, capsys)
    assert code == 1
    assert "entry 0" in text and "content altered" in text


# -- resume -------------------------------------------------------------------------------------
class _KilledError(RuntimeError):
    pass


def test_interrupted_evaluation_resumes_with_identical_numbers(
    evaluated: dict[str, Any], trained: dict[str, Any], tmp_path: Path
) -> None:
    overrides = [*FAST, f"ckpt_path={trained['ckpt']}", "ledger=null"]
    done: list[str] = []

    def kill_after_five(key: str) -> None:
        done.append(key)
        if len(done) == 5:
            raise _KilledError(key)

    with pytest.raises(_KilledError):
        run(compose("eval", overrides, str(tmp_path)), on_unit=kill_after_five)
    assert not (tmp_path / "report.json").exists()
    assert len(list((tmp_path / "eval_state").rglob("*.pt"))) == 5
    resumed = run(compose("eval", overrides, str(tmp_path)))
    assert resumed["resume"]["reused"] == 5
    assert resumed["resume"]["units"] == evaluated["report"]["resume"]["units"]
    assert _numbers(resumed) == _numbers(evaluated["report"])
    # State of other settings is never mixed in.
    with pytest.raises(StateMismatchError, match="n_examples"):
        run(compose("eval", [*overrides, "n_examples=40"], str(tmp_path)))


# -- sanity flags -------------------------------------------------------------------------------
class _Quantize(nn.Module):
    """Input quantisation to 4 grey levels: zero input gradients (a gradient-masking defence)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x * 3) / 3


def test_gradient_masked_model_is_flagged(trained: dict[str, Any], tmp_path: Path) -> None:
    masked = nn.Sequential(_Quantize(), copy.deepcopy(trained["model"])).eval()
    before = {k: v.clone() for k, v in masked.state_dict().items()}
    overrides = [
        "threat.eps=0.2",
        "n_examples=32",
        "batch_size=32",
        "attacks=pgd",
        "attacks.pgd-50x5.steps=3",
        "attacks.pgd-50x5.restarts=1",
        "eps_grid.factors=[0,1]",
        "certify.bounds.methods=[ibp]",
        "progress=false",
        "ledger=null",
    ]
    report = run(compose("eval", overrides, str(tmp_path)), model=masked)
    assert "zero_gradients" in report["sanity"]["triggered"]
    assert report["sanity"]["white_box_trustworthy"] is False
    # The quantiser is not a layer bound propagation handles: recorded, not fatal.
    ibp = report["certified"]["bounds"]["ibp"]
    assert ibp["supported"] is False and ibp["reason"]
    md = (tmp_path / "report.md").read_text()
    html = (tmp_path / "report.html").read_text()
    assert "WARNING: white-box robust accuracy cannot be trusted" in md
    assert 'class="banner"' in html and "white-box robust accuracy cannot be trusted" in html
    assert "zero_gradients" in md
    assert all(torch.equal(before[k], v) for k, v in masked.state_dict().items())
    assert masked.training is False


# -- bad input ----------------------------------------------------------------------------------
def test_architecture_mismatch_names_the_keys(trained: dict[str, Any], tmp_path: Path) -> None:
    wider = [o for o in FAST if not o.startswith("model.width")] + ["model.width=16"]
    cfg = compose("eval", [*wider, f"ckpt_path={trained['ckpt']}", "ledger=null"], str(tmp_path))
    with pytest.raises(CheckpointMismatchError) as exc:
        run(cfg)
    msg = str(exc.value)
    assert "0.weight (checkpoint [8, 1, 3, 3] vs model [16, 1, 3, 3])" in msg
    assert "model=" in msg  # says what to change
    cfg = compose(
        "eval", ["model=mlp", "threat.eps=0.2", f"ckpt_path={trained['ckpt']}"], str(tmp_path)
    )
    with pytest.raises(CheckpointMismatchError) as exc:
        run(cfg)
    msg = str(exc.value)
    assert "4 missing key(s): 1.bias, 1.weight, 3.bias, 3.weight" in msg
    assert "6 unexpected key(s): 0.bias, 0.weight, 2.bias, 2.weight, 7.bias, 7.weight" in msg
    assert "5.weight (checkpoint [32, 256] vs model [10, 256])" in msg


def test_pickled_checkpoint_needs_trust(trained: dict[str, Any], tmp_path: Path) -> None:
    pickled = tmp_path / "whole_model.pt"
    torch.save(trained["model"], pickled)  # a pickled nn.Module: not weights-only
    cfg = compose("eval", [*FAST, f"ckpt_path={pickled}", "ledger=null"], str(tmp_path / "o"))
    with pytest.raises(UnsafeCheckpointError, match="trust_checkpoint=true"):
        run(cfg)
    target = SmallCNN(width=WIDTH, hidden=HIDDEN)
    with pytest.warns(UserWarning, match="UNSAFE LOAD"):
        ckpt = load_weights(target, pickled, trust=True)
    assert ckpt.loaded_with == "trusted_pickle" and ckpt.format == "module"
    for k, v in trained["model"].state_dict().items():
        assert torch.equal(target.state_dict()[k], v)


def test_lightning_checkpoint_and_run_dir(trained: dict[str, Any], tmp_path: Path) -> None:
    # A Lightning-style checkpoint: weights under "state_dict" with the module's "model." prefix.
    ckpt = tmp_path / "last.ckpt"
    state = {f"model.{k}": v for k, v in trained["model"].state_dict().items()}
    torch.save({"state_dict": state, "epoch": 3, "pytorch-lightning_version": "2.6"}, ckpt)
    loaded = load_weights(SmallCNN(width=WIDTH, hidden=HIDDEN), ckpt)
    assert loaded.format == "lightning" and loaded.prefix == "model."
    # run_dir: an advtrain-train output folder gives the model, data and threat model.
    run_dir = tmp_path / "train_run"
    run_dir.mkdir()
    train_cfg = compose(
        "train",
        [f"model.width={WIDTH}", f"model.hidden={HIDDEN}", "threat.eps=0.15"],
        str(run_dir),
    )
    from omegaconf import OmegaConf

    (run_dir / "config_resolved.yaml").write_text(OmegaConf.to_yaml(train_cfg, resolve=True))
    shutil.copy(trained["ckpt"], run_dir / "model.pt")
    overrides = [
        f"run_dir={run_dir}",
        "n_examples=16",
        "attacks=pgd",
        "attacks.pgd-50x5.steps=1",
        "attacks.pgd-50x5.restarts=1",
        "eps_grid.factors=[]",
        "certify.bounds.methods=[]",
        "sanity.enabled=false",
        "progress=false",
        "ledger=null",
    ]
    report = run(compose("eval", overrides, str(tmp_path / "eval")))
    assert report["threat_model"]["eps"] == 0.15
    assert report["checkpoint"]["sha256"] == sha256_file(trained["ckpt"])
    assert report["settings"]["model"]["width"] == WIDTH


# -- compare ------------------------------------------------------------------------------------
def test_compare_writes_tables_and_refuses_other_schema_versions(
    evaluated: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = evaluated["out"] / "report.json"
    other = dict(evaluated["saved"])
    other["n_examples"] = 40
    b = tmp_path / "b.json"
    b.write_text(json.dumps(other))
    with pytest.raises(SystemExit) as exc:
        main(["compare", str(a), str(b), "--out", str(tmp_path / "cmp")])
    assert exc.value.code == 0
    captured = capsys.readouterr()
    assert "different numbers of examples: 48 vs 40" in captured.err
    md = (tmp_path / "cmp" / "compare.md").read_text()
    clean = f"{100 * evaluated['saved']['clean_accuracy']:.1f}%"
    assert f"| clean | {clean} | {clean} | +0.0 pp |" in md
    csv_rows = (tmp_path / "cmp" / "compare.csv").read_text().splitlines()
    assert csv_rows[0] == "metric,a,b,b_minus_a"
    assert any(r.startswith("certified: crown @ eps=0.2,") for r in csv_rows)
    future = dict(evaluated["saved"], schema_version=99)
    c = tmp_path / "c.json"
    c.write_text(json.dumps(future))
    with pytest.raises(SystemExit) as exc:
        main(["compare", str(a), str(c)])
    assert exc.value.code == 2
    assert "schema_version 99" in capsys.readouterr().err


# -- the console script -------------------------------------------------------------------------
def test_console_script_runs(trained: dict[str, Any], tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("advtrain-eval")
    if not exe.exists():
        pytest.skip("advtrain-eval is not installed next to this interpreter")
    ledger = tmp_path / "ledger.jsonl"
    args = [
        str(exe),
        f"ckpt_path={trained['ckpt']}",
        f"model.width={WIDTH}",
        f"model.hidden={HIDDEN}",
        "threat.eps=8/40",
        "n_examples=16",
        "attacks=pgd",
        "attacks.pgd-50x5.steps=2",
        "attacks.pgd-50x5.restarts=1",
        "eps_grid.factors=[0,1]",
        "certify.bounds.methods=[ibp]",
        "progress=false",
        f"output_dir={tmp_path / 'out'}",
        f"ledger={ledger}",
    ]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    saved = _load(tmp_path / "out")
    assert saved["threat_model"]["eps"] == 0.2 and saved["n_examples"] == 16
    assert "clean" in done.stdout and "ledger" in done.stdout
    assert (tmp_path / "out" / "report.html").is_file()
    assert len(ledger.read_text().splitlines()) == 1


def test_the_eps_curve_from_one_fmn_run(trained: dict[str, Any], tmp_path: Path) -> None:
    """``attacks@eps_grid.min_norm=fmn``: the curve from one minimum-norm run, capped at the
    threat eps by the main attacks, FMN among the attacks, in every format of the report."""
    overrides = [
        *FAST,
        f"ckpt_path={trained['ckpt']}",
        "attacks@eps_grid.min_norm=fmn",
        "eps_grid.attacks=[]",
        "eps_grid.min_norm.fmn.steps=20",
        "eps_grid.factors=[0,0.5,1,2]",
        "certify.bounds.methods=[]",
        "certify.smoothing.sigma=null",
    ]
    report = run(compose("eval", overrides, str(tmp_path)))
    assert validate_report(report) == []
    curve = [p["accuracy"] for p in report["eps_curve"]]
    assert curve == sorted(curve, reverse=True) and curve[0] == report["clean_accuracy"]
    assert curve[2] <= report["robust_accuracy"]["worst_case"]
    assert curve[3] < curve[2], "twice the eps fools more of a briefly trained model"
    assert "fmn" in report["robust_accuracy"]
    assert report["attacks"]["fmn"]["target"] == "advtrain.attacks.FMN"
    assert report["eps_grid"]["min_norm"]["capped_by"] == ["pgd-50x5"]
    assert report["settings"]["eps_grid"]["min_norm"]["steps"] == 20
    assert "minimum-norm fmn" in (tmp_path / "report.md").read_text()
    flags = {f["code"] for f in report["sanity"]["flags"]}
    assert "weak_min_norm_curve" in flags
