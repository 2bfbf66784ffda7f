"""The report's figures, drawn from ``report.json``'s numbers alone (PNG, Agg canvas).

* ``robust_vs_eps.png``: robust accuracy against eps for each attack and the worst case (bold),
  with the bound-propagation certificates (dashed) when they were computed along the grid;
* ``certified_vs_radius.png``: verified accuracy of IBP/CROWN against eps and the randomized
  smoothing certified accuracy against the L2 radius (Cohen et al., ICML 2019);
* ``gap.png``: clean, empirical (each attack, worst case) and certified accuracy at the threat
  model's eps: the gap between what attacks found and what is proven;
* ``per_class.png``: clean and robust accuracy per class.

Each figure is drawn on its own :class:`matplotlib.figure.Figure` (no global pyplot state), so
this is safe in threads and never opens a window.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ROBUST_VS_EPS = "robust_vs_eps.png"
CERTIFIED_VS_RADIUS = "certified_vs_radius.png"
GAP = "gap.png"
PER_CLASS = "per_class.png"


def _figure(width: float = 6.0, height: float = 3.8) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(str(path))


def _pct_list(values: list[Any]) -> list[float]:
    return [math.nan if v is None else 100.0 * float(v) for v in values]


def plot_robust_vs_eps(report: Mapping[str, Any], path: str | os.PathLike[str]) -> bool:
    """Robust accuracy vs eps per attack and worst case; ``False`` if there is no curve."""
    grid = report.get("eps_grid")
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    threat = report.get("threat_model", {})
    if grid and grid.get("eps"):
        eps = grid["eps"]
        for name, accs in grid["accuracy"].items():
            if name == "worst_case":
                continue
            ax.plot(eps, _pct_list(accs), marker="o", ms=3, lw=1.2, label=name)
        if "worst_case" in grid["accuracy"]:
            ax.plot(
                eps,
                _pct_list(grid["accuracy"]["worst_case"]),
                marker="o",
                color="black",
                lw=2.4,
                label="worst case",
            )
    elif report.get("eps_curve"):
        curve = report["eps_curve"]
        ax.plot(
            [p["eps"] for p in curve],
            _pct_list([p["accuracy"] for p in curve]),
            marker="o",
            color="black",
            lw=2,
            label=report.get("eps_curve_attack") or "robust",
        )
    else:
        return False
    for name, res in ((report.get("certified") or {}).get("bounds") or {}).items():
        if res.get("supported") and len(res.get("eps") or []) > 1:
            ax.plot(
                res["eps"],
                _pct_list(res["accuracy"]),
                ls="--",
                marker="s",
                ms=3,
                label=f"verified ({name})",
            )
    if threat.get("eps") is not None:
        ax.axvline(float(threat["eps"]), color="grey", ls=":", lw=1)
    ax.set_xlabel(f"eps ({threat.get('norm', '')})")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.set_title("robust accuracy vs eps")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    _save(fig, Path(path))
    return True


def plot_certified_vs_radius(report: Mapping[str, Any], path: str | os.PathLike[str]) -> bool:
    """Certified accuracy vs radius (bounds vs eps, smoothing vs L2 radius); ``False`` if none."""
    cert = report.get("certified") or {}
    bounds = {n: r for n, r in (cert.get("bounds") or {}).items() if r.get("supported")}
    smoothing = cert.get("smoothing")
    panels = int(bool(bounds)) + int(bool(smoothing))
    if not panels:
        return False
    fig = _figure(5.0 * panels, 3.6)
    i = 1
    if bounds:
        ax = fig.add_subplot(1, panels, i)
        i += 1
        for name, res in bounds.items():
            ax.plot(res["eps"], _pct_list(res["accuracy"]), marker="s", ms=3, label=name)
        norm = report.get("threat_model", {}).get("norm", "")
        ax.set_xlabel(f"eps ({norm})")
        ax.set_ylabel("verified accuracy (%)")
        ax.set_title("bound propagation")
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if smoothing:
        ax = fig.add_subplot(1, panels, i)
        curve = smoothing.get("curve") or {}
        if curve.get("radius"):
            ax.plot(
                curve["radius"],
                _pct_list(curve["accuracy"]),
                lw=1.5,
                label=f"σ = {smoothing['sigma']:g}",
            )
        ax.plot(smoothing["radii"], _pct_list(smoothing["accuracy"]), "o", color="C0")
        ax.set_xlabel("L2 radius")
        ax.set_ylabel("certified accuracy (%)")
        ax.set_title(f"randomized smoothing ({smoothing['n_examples']} ex.)")
        ax.set_ylim(-2, 102)
        ax.set_xlim(left=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    _save(fig, Path(path))
    return True


def plot_gap(report: Mapping[str, Any], path: str | os.PathLike[str]) -> bool:
    """Bars at the threat model's eps: clean, each attack, worst case, each certificate."""
    labels: list[str] = ["clean"]
    values: list[float] = [report["clean_accuracy"]]
    colors: list[str] = ["#4c72b0"]
    robust = dict(report.get("robust_accuracy") or {})
    worst = robust.pop("worst_case", None)
    for name, acc in robust.items():
        labels.append(name)
        values.append(acc)
        colors.append("#dd8452")
    if worst is not None:
        labels.append("worst case")
        values.append(worst)
        colors.append("#c44e52")
    cert = report.get("certified") or {}
    n_cert = 0
    for name, res in (cert.get("bounds") or {}).items():
        if res.get("supported") and res.get("at_threat_eps") is not None:
            labels.append(f"verified\n{name}")
            values.append(res["at_threat_eps"])
            colors.append("#55a868")
            n_cert += 1
    smoothing = cert.get("smoothing")
    if smoothing and smoothing.get("at_threat_eps") is not None:
        labels.append("smoothing\n(g, L2)")
        values.append(smoothing["at_threat_eps"])
        colors.append("#8172b3")
        n_cert += 1
    if len(values) < 2:
        return False
    fig = _figure(max(5.0, 0.9 * len(values) + 1.5), 3.8)
    ax = fig.add_subplot(1, 1, 1)
    xs = list(range(len(values)))
    bars = ax.bar(xs, [100 * v for v in values], color=colors)
    for bar, v in zip(bars, values, strict=True):
        ax.text(
            bar.get_x() + bar.get_width() / 2,
            100 * v + 1,
            f"{100 * v:.1f}",
            ha="center",
            va="bottom",
            fontsize=7,
        )
    ax.set_xticks(xs)
    ax.set_xticklabels(labels, fontsize=7)
    ax.set_ylim(0, 110)
    ax.set_ylabel("accuracy (%)")
    threat = report.get("threat_model", {})
    gap = cert.get("gap") or {}
    title = f"empirical vs certified at {threat.get('norm', '')} eps={threat.get('eps', 0):.4g}"
    if gap.get("gap") is not None:
        title += f" (gap {100 * gap['gap']:.1f} pp)"
    elif not n_cert:
        title += " (no certificate)"
    ax.set_title(title, fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    _save(fig, Path(path))
    return True


def plot_per_class(report: Mapping[str, Any], path: str | os.PathLike[str]) -> bool:
    """Grouped bars: accuracy per class for clean, each attack and the worst case."""
    pc = report.get("per_class")
    if not pc or not pc.get("classes"):
        return False
    classes = pc["classes"]
    series = list(pc["accuracy"].items())
    fig = _figure(min(12.0, max(6.0, 0.5 * len(classes) + 3.0)), 3.8)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(1, len(series))
    for j, (name, accs) in enumerate(series):
        xs = [c + (j - (len(series) - 1) / 2) * width for c in range(len(classes))]
        ax.bar(
            xs,
            _pct_list(accs),
            width=width,
            label=name.replace("_", " "),
            color="black" if name == "worst_case" else None,
        )
    ax.set_xticks(list(range(len(classes))))
    ax.set_xticklabels([str(c) for c in classes])
    ax.set_xlabel("class")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 118)
    ax.set_title("accuracy per class")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=min(4, len(series)), loc="upper center")
    _save(fig, Path(path))
    return True


def make_figures(report: Mapping[str, Any], out_dir: str | os.PathLike[str]) -> dict[str, str]:
    """Draws every figure the report's numbers allow into ``out_dir``.

    Returns:
        Title → file name (relative to ``out_dir``), for ``report["figures"]``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures: dict[str, str] = {}
    plots = (
        ("robust accuracy vs eps", ROBUST_VS_EPS, plot_robust_vs_eps),
        ("certified accuracy vs radius", CERTIFIED_VS_RADIUS, plot_certified_vs_radius),
        ("empirical vs certified accuracy at eps", GAP, plot_gap),
        ("accuracy per class", PER_CLASS, plot_per_class),
    )
    for title, fname, plot in plots:
        if plot(report, out / fname):
            figures[title] = fname
    return figures


__all__ = [
    "CERTIFIED_VS_RADIUS",
    "GAP",
    "PER_CLASS",
    "ROBUST_VS_EPS",
    "make_figures",
    "plot_certified_vs_radius",
    "plot_gap",
    "plot_per_class",
    "plot_robust_vs_eps",
]
