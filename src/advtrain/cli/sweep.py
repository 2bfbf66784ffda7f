"""Sweep summaries: mean ± standard deviation across seeds of every job's report.

``advtrain-train -m threat.eps=0.1,0.2,0.3 seed=0,1`` runs one job per combination, each writing
``report.json`` into its own folder ``<sweep dir>/<job number>`` (with Hydra's record of the job's
overrides in ``.hydra/overrides.yaml``). :func:`summarize_sweep` groups the jobs by their
overrides other than the seed, and writes into the sweep folder

* ``sweep_summary.csv`` — one row per group: the varying overrides, the number of jobs, their
  seeds, then ``<metric>_mean`` and ``<metric>_std`` for clean accuracy, every attack's robust
  accuracy (``robust/<attack>``, ``robust/worst_case``) and every certified accuracy
  (``certified/<name>``);
* ``sweep_summary.md`` — the same as a Markdown table in percent, ``mean ± std``.

The standard deviation is the sample standard deviation (``n - 1`` in the denominator); it is
left empty (CSV) or shown as ``n=1`` (Markdown) for a group with a single job.
:class:`SweepSummary` is the Hydra callback (registered in ``train.yaml``'s
``hydra.callbacks``) that calls :func:`summarize_sweep` after the last job of a multirun.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

SUMMARY_CSV = "sweep_summary.csv"
SUMMARY_MD = "sweep_summary.md"


@dataclass
class SweepGroup:
    """The jobs of a sweep that share every override but the seed.

    Attributes:
        overrides: ``key → value`` of the group's overrides (seed excluded), as typed.
        jobs: The jobs' folder names.
        seeds: The jobs' seeds (from their reports).
        metrics: Metric name → one value per job (``None`` where a job lacks the metric).
    """

    overrides: dict[str, str]
    jobs: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    metrics: dict[str, list[float | None]] = field(default_factory=dict)

    def mean(self, metric: str) -> float | None:
        """Mean over the jobs that report ``metric`` (``None`` if none do)."""
        values = [v for v in self.metrics.get(metric, []) if v is not None]
        return statistics.fmean(values) if values else None

    def std(self, metric: str) -> float | None:
        """Sample standard deviation (``n - 1``) over the jobs; ``None`` below two values."""
        values = [v for v in self.metrics.get(metric, []) if v is not None]
        return statistics.stdev(values) if len(values) >= 2 else None


@dataclass
class SweepResult:
    """What :func:`summarize_sweep` found and wrote."""

    sweep_dir: Path
    groups: list[SweepGroup]
    keys: list[str]
    fixed: dict[str, str]
    metrics: list[str]
    missing: list[str]
    csv_path: Path
    md_path: Path


def report_metrics(report: Mapping[str, Any]) -> dict[str, float]:
    """The summarised numbers of one report: ``clean``, ``robust/<name>``, ``certified/<name>``."""
    out: dict[str, float] = {"clean": float(report["clean_accuracy"])}
    for name, value in (report.get("robust_accuracy") or {}).items():
        out[f"robust/{name}"] = float(value)
    for name, value in ((report.get("certified") or {}).get("summary") or {}).items():
        if value is not None:
            out[f"certified/{name}"] = float(value)
    return out


def _job_overrides(job_dir: Path) -> list[str]:
    path = job_dir / ".hydra" / "overrides.yaml"
    if not path.exists():
        return []
    return [str(o) for o in OmegaConf.load(path)]  # type: ignore[union-attr]


def _split_override(override: str) -> tuple[str, str]:
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


def _job_sort_key(path: Path) -> tuple[int, str]:
    return (int(path.name), "") if path.name.isdigit() else (1 << 30, path.name)


def summarize_sweep(
    sweep_dir: str | Path, seed_key: str = "seed", write: bool = True
) -> SweepResult:
    """Groups a sweep's job reports by their non-seed overrides and writes the summary tables.

    Args:
        sweep_dir: The multirun folder (``hydra.sweep.dir``) whose sub-folders are the jobs.
        seed_key: The override that varies the seed (excluded from the grouping).
        write: Write ``sweep_summary.csv`` and ``sweep_summary.md`` into ``sweep_dir``.

    Returns:
        A :class:`SweepResult` with the groups in the order of their first job.

    Raises:
        FileNotFoundError: If ``sweep_dir`` does not exist or holds no job report.
    """
    sweep = Path(sweep_dir)
    if not sweep.is_dir():
        raise FileNotFoundError(f"sweep folder {sweep} does not exist")
    job_dirs = sorted((d for d in sweep.iterdir() if d.is_dir()), key=_job_sort_key)
    jobs: list[tuple[str, dict[str, str], dict[str, Any]]] = []
    missing: list[str] = []
    for d in job_dirs:
        overrides = dict(_split_override(o) for o in _job_overrides(d))
        report_path = d / "report.json"
        if not report_path.exists():
            if (d / ".hydra").exists():
                missing.append(d.name)
            continue
        report = json.loads(report_path.read_text())
        overrides.pop(seed_key, None)
        jobs.append((d.name, overrides, report))
    if not jobs:
        raise FileNotFoundError(f"no job folder with a report.json in {sweep}")

    all_keys: list[str] = []
    for _, overrides, _ in jobs:
        all_keys += [k for k in overrides if k not in all_keys]
    keys = [k for k in all_keys if len({o.get(k) for _, o, _ in jobs}) > 1]
    fixed = {k: jobs[0][1][k] for k in all_keys if k not in keys and k in jobs[0][1]}

    groups: dict[tuple[tuple[str, str | None], ...], SweepGroup] = {}
    metrics: list[str] = []
    for name, overrides, report in jobs:
        ident = tuple((k, overrides.get(k)) for k in keys)
        group = groups.setdefault(ident, SweepGroup({k: v for k, v in ident if v is not None}))
        values = report_metrics(report)
        metrics += [m for m in values if m not in metrics]
        for metric in metrics:
            group.metrics.setdefault(metric, [None] * len(group.jobs))
        for metric, series in group.metrics.items():
            series.append(values.get(metric))
        group.jobs.append(name)
        group.seeds.append(int(report.get("seed", -1)))
    for group in groups.values():  # metrics first seen in a later group
        for metric in metrics:
            group.metrics.setdefault(metric, [None] * len(group.jobs))

    summary = SweepResult(
        sweep_dir=sweep,
        groups=list(groups.values()),
        keys=keys,
        fixed=fixed,
        metrics=metrics,
        missing=missing,
        csv_path=sweep / SUMMARY_CSV,
        md_path=sweep / SUMMARY_MD,
    )
    if write:
        _write_csv(summary)
        summary.md_path.write_text(markdown_summary(summary))
    return summary


def _write_csv(summary: SweepResult) -> None:
    header = [*summary.keys, "n_jobs", "seeds", "jobs"]
    for metric in summary.metrics:
        header += [f"{metric}_mean", f"{metric}_std"]
    with summary.csv_path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        for g in summary.groups:
            row: list[Any] = [g.overrides.get(k, "") for k in summary.keys]
            row += [len(g.jobs), " ".join(map(str, g.seeds)), " ".join(g.jobs)]
            for metric in summary.metrics:
                mean, std = g.mean(metric), g.std(metric)
                row += [
                    repr(mean) if mean is not None else "",
                    repr(std) if std is not None else "",
                ]
            writer.writerow(row)


def _cell(mean: float | None, std: float | None, n: int) -> str:
    if mean is None or math.isnan(mean):
        return "n/a"
    if std is None:
        return f"{100 * mean:.1f} (n={n})"
    return f"{100 * mean:.1f} ± {100 * std:.1f}"


def markdown_summary(summary: SweepResult) -> str:
    """The Markdown table of :func:`summarize_sweep` (accuracies in percent, mean ± std)."""
    lines = [f"# Sweep summary: {summary.sweep_dir}", ""]
    lines.append(
        "Accuracies in percent, mean ± sample standard deviation over the jobs of each row "
        "(seeds listed)."
    )
    if summary.fixed:
        fixed = ", ".join(f"`{k}={v}`" for k, v in summary.fixed.items())
        lines += ["", f"Fixed overrides: {fixed}."]
    if summary.missing:
        lines += [
            "",
            f"Jobs without a report (failed or still running): {', '.join(summary.missing)}.",
        ]
    cols = [*summary.keys, "jobs", "seeds", *summary.metrics]
    lines += ["", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for g in summary.groups:
        cells = [g.overrides.get(k, "") for k in summary.keys]
        cells += [str(len(g.jobs)), " ".join(map(str, g.seeds))]
        cells += [_cell(g.mean(m), g.std(m), len(g.jobs)) for m in summary.metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


class SweepSummary(Callback):
    """Hydra callback: after a multirun, :func:`summarize_sweep` of its sweep folder.

    Registered in ``train.yaml`` under ``hydra.callbacks.sweep_summary``. The sweep folder is
    taken from the jobs that ran in this process (Hydra's basic launcher), else from the
    multirun's ``hydra.sweep.dir``.

    Args:
        seed_key: The override that varies the seed.
    """

    def __init__(self, seed_key: str = "seed") -> None:
        self.seed_key = seed_key
        self._sweep_dirs: list[str] = []

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if not HydraConfig.initialized():
            return
        hydra_cfg = HydraConfig.get()
        if hydra_cfg.mode == RunMode.MULTIRUN:
            sweep_dir = str(Path(hydra_cfg.sweep.dir).resolve())
            if sweep_dir not in self._sweep_dirs:
                self._sweep_dirs.append(sweep_dir)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        dirs: Sequence[str] = self._sweep_dirs or [str(config.hydra.sweep.dir)]
        for sweep_dir in dirs:
            summary = summarize_sweep(sweep_dir, seed_key=self.seed_key)
            log.info("sweep summary: %s and %s", summary.md_path, summary.csv_path)
            print(summary.md_path.read_text())


__all__ = [
    "SUMMARY_CSV",
    "SUMMARY_MD",
    "SweepGroup",
    "SweepResult",
    "SweepSummary",
    "markdown_summary",
    "report_metrics",
    "summarize_sweep",
]
