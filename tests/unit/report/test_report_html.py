"""report.html and report.md: self-contained, escaped, the same numbers, warnings shown."""

from __future__ import annotations

import base64
import re
from pathlib import Path

from report_helpers import make_report

from advtrain.report import write_report
from advtrain.report.html import render_html
from advtrain.report.writer import markdown, result_rows

# A 1x1 PNG (valid file) for the embedding test.
_PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


def test_embeds_figures_and_uses_no_network(tmp_path: Path) -> None:
    (tmp_path / "fig.png").write_bytes(_PNG)
    page = render_html(make_report(figures={"a figure": "fig.png"}), tmp_path)
    uri = re.search(r'src="data:image/png;base64,([^"]+)"', page)
    assert uri is not None and base64.b64decode(uri.group(1)) == _PNG
    assert "http" not in page and "<script" not in page and "<link" not in page
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page


def test_rows_agree_with_markdown_and_text_is_escaped(tmp_path: Path) -> None:
    report = make_report()
    report["attacks"]["pgd-50x5"]["params"]["note"] = "<script>alert(1)</script>"
    report["settings"]["attacks"] = {"pgd-50x5": report["attacks"]["pgd-50x5"]["params"]}
    page = render_html(report, tmp_path)
    md = markdown(report)
    for label, acc, count in result_rows(report):
        pct = f"{100 * acc:.1f}%"
        assert f"<td>{label}</td><td>{pct}</td><td>{count}</td>" in page
        assert f"| {label} | {pct} | {count} |" in md
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "not supported: bound propagation does not support X" in page
    assert "WARNING: white-box" not in page and "No sanity check fired" in page


def test_untrusted_white_box_numbers_get_a_banner(tmp_path: Path) -> None:
    report = make_report()
    report["sanity"] = {
        "flags": [
            {
                "code": "zero_gradients",
                "triggered": True,
                "message": "Zero gradients.",
                "advice": "Use BPDA.",
                "details": {},
            }
        ],
        "triggered": ["zero_gradients"],
        "white_box_trustworthy": False,
        "warning": "Sanity checks fired (zero_gradients).",
    }
    page = render_html(report, tmp_path)
    md = markdown(report)
    banner = "WARNING: white-box robust accuracy cannot be trusted."
    assert banner in page and 'class="banner"' in page and "Use BPDA." in page
    assert md.splitlines()[2].startswith(f"> **{banner}**")
    assert "**[WARNING] zero_gradients**" in md


def test_write_report_writes_all_files_and_nan_as_null(tmp_path: Path) -> None:
    report = make_report()
    report["timings_s"] = {"attacks": 1.0}
    report["per_class"]["accuracy"]["clean"][2] = float("nan")
    write_report(report, tmp_path)
    for name in (
        "report.json",
        "report.md",
        "report.html",
        "robust_vs_eps.png",
        "gap.png",
        "per_class.png",
        "certified_vs_radius.png",
    ):
        assert (tmp_path / name).is_file(), name
    text = (tmp_path / "report.json").read_text()
    assert "NaN" not in text


def test_both_pages_say_which_autoattack_protocol_ran_and_how_far_it_escalated(
    tmp_path: Path,
) -> None:
    report = make_report()
    entry = next(iter(report["attacks"].values()))
    entry["protocol"] = {
        "version": "rapid",
        "escalated": True,
        "reason": "the Square check fooled examples the white-box members missed in 1 of 2 batches",
        "escalation_coverage": 0.25,
    }
    expected = "AutoAttack rapid, escalated (the Square check fooled examples"
    assert expected in markdown(report) and expected in render_html(report, tmp_path)
    assert "covered 25% of the examples still robust" in markdown(report)
    entry["protocol"] = {"version": "rapid", "escalated": False, "reason": None}
    assert "AutoAttack rapid, not escalated" in markdown(report)
