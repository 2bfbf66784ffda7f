"""The report.json schema: the validator accepts valid reports and names every problem."""

from __future__ import annotations

import json

import pytest
from report_helpers import SHA, make_report

from advtrain.report.schema import REPORT_SCHEMA, ReportSchemaError, check_report, validate_report


def test_sample_report_is_valid_and_schema_is_json() -> None:
    assert validate_report(make_report()) == []
    # The schema itself is plain JSON (printable by `advtrain-eval schema`).
    assert json.loads(json.dumps(REPORT_SCHEMA))["properties"]["schema_version"]["enum"] == [1]


def test_a_train_report_without_the_optional_sections_is_valid() -> None:
    minimal = {
        "schema_version": 1,
        "clean_accuracy": 0.9,
        "robust_accuracy": {"pgd-50x5": 0.5},
        "threat_model": {"norm": "linf", "eps": 0.2, "bounds": [0.0, 1.0]},
        "n_examples": 10,
        "data_sha256": SHA,
        "checkpoint": {"path": "m.pt", "sha256": SHA},
        "config_sha256": SHA,
        "environment": {"advtrain": "0.1.0", "torch": "2.x"},
    }
    assert validate_report(minimal) == []


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"clean_accuracy": 1.5}, "$.clean_accuracy: 1.5 > maximum 1"),
        ({"clean_accuracy": "90%"}, "$.clean_accuracy: expected number, got str"),
        ({"data_sha256": "xyz"}, "$.data_sha256: 'xyz' does not match"),
        ({"n_examples": 0}, "$.n_examples: 0 < minimum 1"),
        ({"robust_accuracy": {"pgd": -0.1}}, "$.robust_accuracy.pgd: -0.1 < minimum 0"),
        ({"clean_accuracy": float("nan")}, "not a finite number"),
        ({"threat_model": {"norm": "linf", "eps": 0.2}}, "missing required key 'bounds'"),
        ({"counts": {"n": 4, "clean": 2.5}}, "$.counts.clean: expected integer"),
    ],
)
def test_validator_names_the_problem(change: dict, expected: str) -> None:
    errors = validate_report(make_report(**change))
    assert any(expected in e for e in errors), errors


def test_missing_required_key_and_nested_errors_are_all_reported() -> None:
    report = make_report()
    del report["config_sha256"]
    report["attacks"]["pgd-50x5"]["correct"] = -1
    errors = validate_report(report)
    assert "$: missing required key 'config_sha256'" in errors
    assert any(e.startswith("$.attacks.pgd-50x5.correct") for e in errors)


def test_check_report_refuses_another_schema_version_with_a_clear_message() -> None:
    with pytest.raises(ReportSchemaError, match="schema_version 2, but this advtrain reads"):
        check_report(make_report(schema_version=2), "B/report.json")
    with pytest.raises(ReportSchemaError, match="does not follow the report schema"):
        check_report(make_report(n_examples=-3))
    check_report(make_report())
