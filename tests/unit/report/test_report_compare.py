"""Comparing two reports: rows, Markdown/CSV output, warnings, schema-version refusal."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from report_helpers import make_report

from advtrain.report.compare import compare_files, compare_reports
from advtrain.report.schema import ReportSchemaError


def test_rows_cover_clean_attacks_members_worst_case_and_certified() -> None:
    b = make_report(clean_accuracy=0.5)
    comp = compare_reports(make_report(), b)
    metrics = [r[0] for r in comp.rows]
    assert metrics == [
        "clean",
        "robust: autoattack",
        "robust: autoattack after apgd-ce",
        "robust: autoattack after square",
        "robust: pgd-50x5",
        "robust: worst case",
        "certified: ibp @ eps=0.2",
        "certified: crown @ eps=0.2",
    ]
    assert comp.warnings == []
    md = comp.markdown()
    assert "| clean | 75.0% | 50.0% | -25.0 pp |" in md
    rows = list(csv.DictReader(io.StringIO(comp.csv())))
    assert rows[0] == {"metric": "clean", "a": "0.75", "b": "0.5", "b_minus_a": "-0.25"}


def test_metrics_present_in_one_report_only_show_na() -> None:
    b = make_report(robust_accuracy={"square": 0.4, "worst_case": 0.4})
    b["counts"] = {"n": 4, "clean": 3, "square": 1, "worst_case": 1}
    comp = compare_reports(make_report(), b)
    assert ("robust: square", None, 0.4) in comp.rows
    assert "| robust: square | n/a | 40.0% | n/a |" in comp.markdown()


def test_warns_when_the_evaluations_differ() -> None:
    b = make_report(data_sha256="cd" * 32, n_examples=8)
    b["threat_model"] = {"norm": "linf", "eps": 0.3, "bounds": [0.0, 1.0]}
    b["attacks"]["pgd-50x5"]["params"]["steps"] = 10
    a = make_report()
    a["settings"]["certify"] = {"bounds": {"methods": ["ibp"]}, "smoothing": None}
    b["settings"]["certify"] = {"bounds": {"methods": ["ibp"]}, "smoothing": {"sigma": 0.5}}
    warnings = compare_reports(a, b).warnings
    assert len(warnings) == 5
    text = " ".join(warnings)
    for part in (
        "different evaluation data",
        "different threat models",
        "8",
        "pgd-50x5",
        "different certification settings: smoothing",
    ):
        assert part in text


def test_refuses_another_schema_version(tmp_path: Path) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(make_report()))
    b.write_text(json.dumps(make_report(schema_version=2)))
    with pytest.raises(ReportSchemaError, match="schema_version 2"):
        compare_files(a, b)
    b.write_text(json.dumps(make_report()))
    comp = compare_files(a, b, out_dir=tmp_path / "out")
    assert (tmp_path / "out" / "compare.csv").read_text() == comp.csv()
    assert (tmp_path / "out" / "compare.md").read_text() == comp.markdown()
