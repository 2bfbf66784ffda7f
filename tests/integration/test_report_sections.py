"""One report schema: a training run's report and an advtrain-eval report have the same sections.

A real (tiny) ``advtrain-train`` run on the embedded digits, then ``advtrain-eval`` on its run
folder; both reports are read section by section, in JSON and in Markdown, and validated against
the one schema.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from advtrain.cli.config import compose
from advtrain.cli.evaluate import run as run_eval
from advtrain.cli.train import run as run_train
from advtrain.report import sha256_file
from advtrain.report.schema import validate_report
from tests.integration.conftest import TINY

#: Sections both console scripts write (the result sections of advtrain.evaluation.report and the
#: provenance of advtrain.cli.eval_report).
SECTIONS = (
    "kind",
    "created",
    "data",
    "clean_accuracy",
    "robust_accuracy",
    "counts",
    "threat_model",
    "n_examples",
    "attacks",
    "eps_curve",
    "eps_curve_attack",
    "eps_grid",
    "per_class",
    "certified",
    "sanity",
    "settings",
    "checkpoint",
    "config_sha256",
    "config_file",
    "data_sha256",
    "seed",
    "timings_s",
    "environment",
    "figures",
)
MARKDOWN = ("## Accuracy per class", "## Sanity checks", "## Robust accuracy against eps")


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[dict[str, Any], Path]]:
    train_dir = tmp_path_factory.mktemp("train")
    cfg = compose(
        "train",
        [*TINY, "evaluation.certify.bounds.methods=[ibp]", "evaluation.sanity.n_examples=16"],
        output_dir=str(train_dir),
    )
    run_train(cfg)
    trained = json.loads((train_dir / "report.json").read_text())
    eval_dir = tmp_path_factory.mktemp("eval")
    ecfg = compose(
        "eval",
        [
            f"run_dir={train_dir}",
            "attacks=pgd",
            "attacks.pgd-50x5.steps=2",
            "attacks.pgd-50x5.restarts=1",
            "n_examples=24",
            "eps_grid.factors=[0,1]",
            "certify.bounds.methods=[ibp]",
            "sanity.n_examples=16",
            "progress=false",
            f"ledger={eval_dir / 'ledger.jsonl'}",
        ],
        output_dir=str(eval_dir),
    )
    run_eval(ecfg)
    evaluated = json.loads(next(eval_dir.rglob("report.json")).read_text())
    folder = next(eval_dir.rglob("report.json")).parent
    return {"train": (trained, train_dir), "evaluation": (evaluated, folder)}


@pytest.mark.parametrize("kind", ["train", "evaluation"])
def test_every_section_in_both_reports(
    reports: dict[str, tuple[dict[str, Any], Path]], kind: str
) -> None:
    report, folder = reports[kind]
    assert report["kind"] == kind
    missing = [s for s in SECTIONS if s not in report]
    assert not missing, f"{kind} report lacks {missing}"
    assert validate_report(report) == []
    # per-class: support sums to n, one accuracy per class for clean and every attack
    per_class = report["per_class"]
    assert sum(per_class["support"]) == report["n_examples"]
    assert {"clean", "worst_case"} <= set(per_class["accuracy"])
    # sanity: every flag explained, the model checks ran, a verdict
    sanity = report["sanity"]
    codes = {f["code"] for f in sanity["flags"]}
    assert {"randomized_model", "probability_outputs", "zero_gradients"} <= codes
    assert sanity["white_box_trustworthy"] in (True, False)
    # certified: IBP ran at the threat model's eps (supported on the SmallCNN)
    assert report["certified"]["bounds"]["ibp"]["supported"] is True
    # the resolved config next to the report, and its hash
    config = folder / report["config_file"]
    assert config.is_file()
    assert sha256_file(config) == report["config_sha256"]
    text = (folder / "report.md").read_text()
    for heading in MARKDOWN:
        assert heading in text, f"{kind} report.md lacks {heading!r}"
    assert report["config_file"] in text and "n/a" not in text.split("## ")[0]
    assert (folder / "report.html").is_file()


def test_the_two_reports_agree_on_the_same_weights(
    reports: dict[str, tuple[dict[str, Any], Path]],
) -> None:
    trained, _ = reports["train"]
    evaluated, _ = reports["evaluation"]
    assert trained["checkpoint"]["sha256"] == evaluated["checkpoint"]["sha256"]
    assert trained["threat_model"]["eps"] == evaluated["threat_model"]["eps"]
    # the same first 24 test examples, the same clean pass
    assert trained["data_sha256"] == evaluated["data_sha256"]
    assert trained["clean_accuracy"] == evaluated["clean_accuracy"]
    # the training data's provenance: the run's manifest, read back by advtrain-eval
    root = trained["data_provenance"]["merkle_root"]
    assert evaluated["data_provenance"]["merkle_root"] == root
    assert Path(evaluated["data_provenance"]["manifest"]).name == "data_manifest.json"
    _, folder = reports["evaluation"]
    ledger = next(
        d / "ledger.jsonl" for d in (folder, *folder.parents) if (d / "ledger.jsonl").is_file()
    )
    entry = json.loads(ledger.read_text().splitlines()[-1])
    assert entry["summary"]["training_data_merkle_root"] == root
    assert "data_manifest" in entry["files"]
