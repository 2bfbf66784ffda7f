"""Side-by-side comparison of two ``report.json`` files (``advtrain-eval compare A B``).

Rows: clean accuracy, each attack (and the members of ensembles such as AutoAttack), the worst
case, and every certified accuracy in ``certified.summary``; columns: A, B and B − A (percentage
points). Written as Markdown and CSV. Reports of another ``schema_version`` are refused; when the
two evaluations differ in what they measured (data hash, threat model, number of examples, attack
or certification settings) the differences are listed as warnings, since the numbers are then not
comparable.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from advtrain.report.schema import ReportSchemaError, check_report


@dataclass
class Comparison:
    """The rows of a comparison and the warnings about what differs between the evaluations.

    Attributes:
        names: Labels of the two reports (their paths).
        rows: ``(metric, value in A, value in B)``; values are fractions or ``None``.
        warnings: Differences that make the numbers not directly comparable.
    """

    names: tuple[str, str]
    rows: list[tuple[str, float | None, float | None]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        """A Markdown table (percent, one decimal; difference in percentage points)."""
        a, b = self.names
        out = ["| metric | A | B | B − A |", "|---|---:|---:|---:|"]
        for metric, va, vb in self.rows:
            out.append(f"| {metric} | {_pct(va)} | {_pct(vb)} | {_diff(va, vb)} |")
        head = [f"A: `{a}`", "", f"B: `{b}`", ""]
        notes = ["", *[f"> **Warning:** {w}" for w in self.warnings]] if self.warnings else []
        return "\n".join(head + out + notes) + "\n"

    def csv(self) -> str:
        """CSV with raw fractions: ``metric,a,b,b_minus_a``."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["metric", "a", "b", "b_minus_a"])
        for metric, va, vb in self.rows:
            diff = vb - va if va is not None and vb is not None else None
            writer.writerow([metric, _raw(va), _raw(vb), _raw(diff)])
        return buf.getvalue()


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def _diff(a: float | None, b: float | None) -> str:
    return "n/a" if a is None or b is None else f"{100 * (b - a):+.1f} pp"


def _raw(v: float | None) -> str:
    return "" if v is None else repr(float(v))


def _metrics(report: Mapping[str, Any]) -> dict[str, float | None]:
    out: dict[str, float | None] = {"clean": report.get("clean_accuracy")}
    robust = dict(report.get("robust_accuracy") or {})
    worst = robust.pop("worst_case", None)
    attacks = report.get("attacks") or {}
    for name, acc in robust.items():
        out[f"robust: {name}"] = acc
        for member in (attacks.get(name) or {}).get("members") or []:
            out[f"robust: {name} after {member['name']}"] = member["accuracy_after"]
    if worst is not None:
        out["robust: worst case"] = worst
    for name, acc in ((report.get("certified") or {}).get("summary") or {}).items():
        out[f"certified: {name}"] = acc
    return out


def _attack_settings(report: Mapping[str, Any]) -> dict[str, Any]:
    return {
        name: {"target": a.get("target"), "params": a.get("params")}
        for name, a in (report.get("attacks") or {}).items()
    }


def compare_reports(
    a: Mapping[str, Any], b: Mapping[str, Any], names: tuple[str, str] = ("A", "B")
) -> Comparison:
    """Compares two parsed reports (both must follow this advtrain's schema version).

    Raises:
        ReportSchemaError: If either report has another ``schema_version`` or is malformed.
    """
    check_report(a, names[0])
    check_report(b, names[1])
    comp = Comparison(names=names)
    ma, mb = _metrics(a), _metrics(b)
    for metric in list(ma) + [m for m in mb if m not in ma]:
        comp.rows.append((metric, ma.get(metric), mb.get(metric)))
    if a.get("data_sha256") != b.get("data_sha256"):
        comp.warnings.append(
            f"different evaluation data: data_sha256 {str(a.get('data_sha256'))[:12]}… vs "
            f"{str(b.get('data_sha256'))[:12]}… (another data set, split, order or n_examples)"
        )
    if a.get("threat_model") != b.get("threat_model"):
        comp.warnings.append(
            f"different threat models: {a.get('threat_model')} vs {b.get('threat_model')}"
        )
    if a.get("n_examples") != b.get("n_examples"):
        comp.warnings.append(
            f"different numbers of examples: {a.get('n_examples')} vs {b.get('n_examples')}"
        )
    sa, sb = _attack_settings(a), _attack_settings(b)
    if sa and sb and sa != sb:
        differing = sorted(k for k in set(sa) | set(sb) if sa.get(k) != sb.get(k))
        comp.warnings.append(f"different attack settings for: {', '.join(differing)}")
    ca = (a.get("settings") or {}).get("certify")
    cb = (b.get("settings") or {}).get("certify")
    if ca is not None and cb is not None and ca != cb:
        parts = sorted(k for k in set(ca) | set(cb) if ca.get(k) != cb.get(k))
        comp.warnings.append(f"different certification settings: {', '.join(parts)}")
    return comp


def load_report(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Reads a ``report.json`` (a folder holding one is accepted)."""
    p = Path(path)
    if p.is_dir():
        p = p / "report.json"
    if not p.is_file():
        raise FileNotFoundError(f"no report at {str(p)!r}")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ReportSchemaError(f"{p} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ReportSchemaError(f"{p} does not hold a JSON object")
    return data


def compare_files(
    a: str | os.PathLike[str],
    b: str | os.PathLike[str],
    out_dir: str | os.PathLike[str] | None = None,
) -> Comparison:
    """Loads, compares and (with ``out_dir``) writes ``compare.md`` and ``compare.csv``."""
    comp = compare_reports(load_report(a), load_report(b), names=(str(a), str(b)))
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "compare.md").write_text(comp.markdown(), encoding="utf-8")
        (out / "compare.csv").write_text(comp.csv(), encoding="utf-8")
    return comp


__all__ = ["Comparison", "compare_files", "compare_reports", "load_report"]
