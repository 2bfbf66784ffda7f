"""Writing a robustness report: ``report.json``, ``report.md`` and the figures.

The JSON schema (``schema_version`` 1) holds at least:

* ``clean_accuracy`` (float) and ``robust_accuracy`` (attack name → accuracy, plus ``worst_case``),
* ``threat_model`` (``norm``, ``eps``, ``bounds``), ``n_examples``,
* ``eps_curve`` (list of ``{"eps", "accuracy"}`` with the attack used),
* ``checkpoint`` (``path``, ``sha256``), ``config_sha256``, ``data_sha256``,
* ``timings_s`` (phase → seconds), ``environment`` (versions, device),
* ``figures`` (name → file name in the report's folder).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1


def sha256_file(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_text(text: str) -> str:
    """SHA-256 of a UTF-8 string."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def environment() -> dict[str, Any]:
    """Versions of advtrain, torch, Lightning and Python, and the compute device."""
    import platform

    import torch

    import advtrain

    info: dict[str, Any] = {
        "advtrain": advtrain.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
    }
    try:
        import pytorch_lightning

        info["pytorch_lightning"] = pytorch_lightning.__version__
    except ImportError:  # pragma: no cover - a core-only install
        pass
    return info


def _pct(value: float | None) -> str:
    return (
        "n/a"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else f"{100 * value:.1f}%"
    )


def summary_table(report: Mapping[str, Any], report_path: str | None = None) -> str:
    """The console table printed at the end of a run (worst case marked)."""
    threat = report["threat_model"]
    head = (
        f"advtrain · {report.get('data', {}).get('name', 'data')} · {threat['norm']} "
        f"eps={threat['eps']:.4g} · {report['n_examples']} test examples"
    )
    rows = [("clean", report["clean_accuracy"], "")]
    robust = dict(report.get("robust_accuracy", {}))
    worst = robust.pop("worst_case", None)
    for name, acc in robust.items():
        rows.append((name, acc, ""))
    if worst is not None and len(robust) > 1:
        rows.append(("worst case", worst, ""))
    if robust:
        worst_name = min(robust, key=lambda k: robust[k])
        rows = [(n, a, "   ← worst case" if n == worst_name else m) for n, a, m in rows]
    for name, acc in report.get("certified", {}).get("summary", {}).items():
        rows.append((f"certified ({name})", acc, ""))
    width = max(len(n) for n, _, _ in rows) + 4
    lines = [head] + [f"{n:<{width}} {_pct(a):>6}{m}" for n, a, m in rows]
    if report_path:
        lines.append(f"report  {report_path}")
    return "\n".join(lines)


def markdown(report: Mapping[str, Any]) -> str:
    """``report.md``: the same numbers as ``report.json``, for people."""
    threat = report["threat_model"]
    out = [
        "# advtrain robustness report",
        "",
        f"- data: {report.get('data', {}).get('name', 'n/a')}, {report['n_examples']} examples "
        f"(sha256 `{report.get('data_sha256', 'n/a')}`)",
        f"- threat model: {threat['norm']} eps={threat['eps']:.6g}, "
        f"bounds {tuple(threat['bounds'])}",
        f"- checkpoint: `{report.get('checkpoint', {}).get('path', 'n/a')}` "
        f"(sha256 `{report.get('checkpoint', {}).get('sha256', 'n/a')}`)",
        f"- config sha256: `{report.get('config_sha256', 'n/a')}`",
        "",
        "| evaluation | accuracy |",
        "|---|---|",
        f"| clean | {_pct(report['clean_accuracy'])} |",
    ]
    for name, acc in report.get("robust_accuracy", {}).items():
        out.append(f"| {name} | {_pct(acc)} |")
    curve = report.get("eps_curve")
    if curve:
        out += ["", f"## Robust accuracy against eps ({report.get('eps_curve_attack', '')})", ""]
        out += ["| eps | accuracy |", "|---|---|"]
        out += [f"| {p['eps']:.4g} | {_pct(p['accuracy'])} |" for p in curve]
    for name, fname in report.get("figures", {}).items():
        out += ["", f"![{name}]({fname})"]
    timings = report.get("timings_s", {})
    if timings:
        out += ["", "## Timings", ""] + [f"- {k}: {v:.1f} s" for k, v in timings.items()]
    return "\n".join(out) + "\n"


def plot_eps_curve(
    curve: list[Mapping[str, float]], path: str | os.PathLike[str], title: str
) -> None:
    """Saves robust accuracy against eps as a PNG."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    eps = [p["eps"] for p in curve]
    acc = [100 * p["accuracy"] for p in curve]
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    ax.plot(eps, acc, marker="o")
    ax.set_xlabel("eps")
    ax.set_ylabel("robust accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(report: dict[str, Any], out_dir: str | os.PathLike[str]) -> Path:
    """Writes ``report.json``, ``report.md`` and the eps-curve PNG into ``out_dir``.

    Returns:
        The path of ``report.json``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report.setdefault("schema_version", SCHEMA_VERSION)
    figures = dict(report.get("figures", {}))
    if report.get("eps_curve"):
        plot_eps_curve(
            report["eps_curve"],
            out / "robust_vs_eps.png",
            f"robust accuracy vs eps ({report.get('eps_curve_attack', '')})",
        )
        figures["robust accuracy vs eps"] = "robust_vs_eps.png"
    report["figures"] = figures
    (out / "report.json").write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")
    (out / "report.md").write_text(markdown(report))
    return out / "report.json"
