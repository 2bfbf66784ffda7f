"""Certify a whole data set with randomized smoothing: per-example TSV, accuracy curve, PNG plot.

Follows the protocol of Cohen, Rosenfeld & Kolter, "Certified Adversarial Robustness via Randomized
Smoothing", ICML 2019 (their ``certify.py``: every ``skip``-th test example, ``n0 = 100``,
``n = 100,000``, ``alpha = 0.001``; one line per example with ``idx, label, predict, radius,
correct, time``), and reports the certified accuracy at chosen radii and as a curve.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from advtrain.certify.smoothing import CertifyResult, Mode, Smooth
from advtrain.validation import check_positive_int

DEFAULT_RADII: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
TSV_NAME = "certify.tsv"
PLOT_NAME = "certified_accuracy.png"
SUMMARY_NAME = "certify_summary.json"


@dataclass
class CertificationReport:
    """The outcome of :func:`certify_dataset`.

    Attributes:
        radii: The radii asked for.
        certified_accuracy: ``{radius: fraction certified correct at radius}``.
        curve_radius: Radii of the certified-accuracy curve (a fine grid from 0).
        curve_accuracy: Certified accuracy at each of ``curve_radius``.
        rows: One dict per example: ``idx, label, predict, radius, correct, time, samples``.
        seconds: Wall time of the whole run.
        mean_samples: Average noisy forward passes per example (``n0 + n`` unless sequential).
        tsv_path: The per-example TSV, when ``out_dir`` was given.
        plot_path: The PNG plot, when ``out_dir`` was given.
    """

    radii: tuple[float, ...]
    certified_accuracy: dict[float, float]
    curve_radius: np.ndarray
    curve_accuracy: np.ndarray
    rows: list[dict[str, Any]] = field(repr=False)
    seconds: float
    mean_samples: float
    tsv_path: Path | None = None
    plot_path: Path | None = None

    @property
    def num_examples(self) -> int:
        """Examples certified."""
        return len(self.rows)

    @property
    def clean_accuracy(self) -> float:
        """Fraction predicted correctly, abstentions counted wrong (certified accuracy at 0)."""
        if not self.rows:
            return math.nan
        return sum(r["correct"] for r in self.rows) / len(self.rows)

    def summary(self) -> dict[str, Any]:
        """JSON-ready numbers: certified accuracy per radius, counts, timing."""
        return {
            "certified_accuracy": {f"{r:g}": a for r, a in self.certified_accuracy.items()},
            "num_examples": self.num_examples,
            "seconds": self.seconds,
            "mean_samples": self.mean_samples,
        }


def _as_indexable(data: Any) -> tuple[int, Any]:
    pair = isinstance(data, (tuple, list)) and len(data) == 2
    if pair and all(isinstance(t, Tensor) for t in data):
        x, y = data
        if x.shape[0] != y.shape[0]:
            raise ValueError(
                f"inputs and labels must have the same length, got {x.shape[0]} and {y.shape[0]}"
            )
        return int(x.shape[0]), lambda i: (x[i], y[i])
    if not isinstance(data, Tensor) and hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        return len(data), data.__getitem__
    raise TypeError(
        "data must be a map-style dataset returning (x, y) or a pair of tensors (x, y), got "
        f"{type(data).__name__}"
    )


def _accuracy_at(correct: np.ndarray, radius: np.ndarray, at: np.ndarray) -> np.ndarray:
    if correct.size == 0:
        return np.full(at.shape, math.nan)
    return ((radius[None, :] >= at[:, None]) & correct[None, :]).mean(axis=1)


def certify_dataset(
    smooth: Smooth,
    data: Any,
    n0: int = 100,
    n: int = 100_000,
    alpha: float = 0.001,
    batch_size: int = 1000,
    radii: Sequence[float] = DEFAULT_RADII,
    skip: int = 1,
    max_examples: int | None = None,
    out_dir: str | Path | None = None,
    mode: Mode = "standard",
    radius: float | None = None,
    progress: bool = True,
) -> CertificationReport:
    """Certifies every ``skip``-th example of ``data`` and reports certified accuracy.

    Args:
        smooth: The smoothed classifier.
        data: A map-style dataset returning ``(x, label)`` or a pair of tensors ``(x, y)``.
        n0: Selection samples per example (Cohen et al.: 100).
        n: Estimation samples per example (Cohen et al.: 100,000).
        alpha: Failure probability per example (Cohen et al.: 0.001).
        batch_size: Noisy copies per forward pass.
        radii: Radii at which to report certified accuracy.
        skip: Certify examples ``0, skip, 2·skip, ...`` (Cohen et al. used 20 on CIFAR-10).
        max_examples: Stop after this many certified examples (``None``: all).
        out_dir: If given, writes ``certify.tsv`` (one line per example: ``idx label predict
            radius correct time samples``, time in seconds), ``certified_accuracy.png`` and
            ``certify_summary.json`` there.
        mode: ``"standard"`` or ``"sequential"`` (see :meth:`Smooth.certify_detailed`).
        radius: The radius the sequential mode decides (required for it).
        progress: Show a progress bar (tqdm, when installed).

    Returns:
        A :class:`CertificationReport`.

    Raises:
        TypeError / ValueError: On a wrong ``smooth``/``data``, bad counts or radii.
    """
    if not isinstance(smooth, Smooth):
        raise TypeError(f"smooth must be an advtrain.certify.Smooth, got {type(smooth).__name__}")
    skip = check_positive_int(skip, "skip")
    if max_examples is not None:
        max_examples = check_positive_int(max_examples, "max_examples")
    radii_t = tuple(float(r) for r in radii)
    if not radii_t or any(not math.isfinite(r) or r < 0 for r in radii_t):
        raise ValueError(f"radii must be a non-empty list of finite radii >= 0, got {radii!r}")
    length, get = _as_indexable(data)
    indices = list(range(0, length, skip))
    if max_examples is not None:
        indices = indices[:max_examples]

    def certify(x: Tensor) -> CertifyResult:
        return smooth.certify_detailed(x, n0, n, alpha, batch_size, mode=mode, radius=radius)

    start_all = time.perf_counter()
    rows = _certify_rows(smooth, get, indices, progress, certify)
    report = _report(rows, radii_t, time.perf_counter() - start_all)
    if out_dir is not None:
        settings = {"n0": n0, "n": n, "alpha": alpha, "mode": mode, "skip": skip}
        _write_outputs(report, Path(out_dir), smooth.sigma, settings)
    return report


def _progress_bar(total: int, sigma: float) -> Any:
    """A tqdm progress bar, or ``None`` without tqdm."""
    try:
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=f"certify σ={sigma:g}", unit="ex")
    except ImportError:  # pragma: no cover - tqdm ships with Lightning
        return None


def _example(get: Any, idx: int, num_classes: int) -> tuple[Any, int]:
    """``data[idx]`` as ``(x, label)``, checked."""
    item = get(idx)
    if not isinstance(item, (tuple, list)) or len(item) < 2:
        raise ValueError(
            f"data[{idx}] must be a pair (x, label), got {type(item).__name__}; wrap "
            "tensors as (x, y) or a TensorDataset"
        )
    x, label = item[0], item[1]
    label = int(label.item() if isinstance(label, Tensor) else label)
    if not 0 <= label < num_classes:
        raise ValueError(f"example {idx} has label {label}, outside [0, {num_classes})")
    return x, label


def _certify_rows(
    smooth: Smooth,
    get: Any,
    indices: list[int],
    progress: bool,
    certify: Callable[[Tensor], CertifyResult],
) -> list[dict[str, Any]]:
    """One row per certified example: ``idx label predict radius correct time samples``."""
    bar = _progress_bar(len(indices), smooth.sigma) if progress else None
    rows: list[dict[str, Any]] = []
    try:
        for idx in indices:
            x, label = _example(get, idx, smooth.num_classes)
            start = time.perf_counter()
            res = certify(torch.as_tensor(x))
            rows.append(
                {
                    "idx": idx,
                    "label": label,
                    "predict": res.prediction,
                    "radius": res.radius,
                    "correct": int(res.prediction == label),
                    "time": time.perf_counter() - start,
                    "samples": res.num_samples,
                }
            )
            if bar is not None:
                bar.update(1)
                bar.set_postfix(acc=f"{np.mean([r['correct'] for r in rows]):.3f}")
    finally:
        if bar is not None:
            bar.close()
    return rows


def _report(
    rows: list[dict[str, Any]], radii: tuple[float, ...], seconds: float
) -> CertificationReport:
    """Certified accuracy at ``radii`` and the accuracy-vs-radius curve of ``rows``."""
    correct = np.array([r["correct"] for r in rows], dtype=bool)
    cert_r = np.array([r["radius"] for r in rows], dtype=np.float64)
    acc = _accuracy_at(correct, cert_r, np.array(radii))
    top = max([*radii, float(cert_r.max()) if cert_r.size else 0.0]) * 1.05 or 1.0
    grid = np.linspace(0.0, top, 256)
    return CertificationReport(
        radii=radii,
        certified_accuracy={r: float(a) for r, a in zip(radii, acc, strict=True)},
        curve_radius=grid,
        curve_accuracy=_accuracy_at(correct, cert_r, grid),
        rows=rows,
        seconds=seconds,
        mean_samples=float(np.mean([r["samples"] for r in rows])) if rows else math.nan,
    )


def _write_outputs(
    report: CertificationReport, out: Path, sigma: float, settings: dict[str, Any]
) -> None:
    """``certify.tsv``, the accuracy plot and ``certify_summary.json`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    report.tsv_path = out / TSV_NAME
    _write_tsv(report.tsv_path, report.rows)
    report.plot_path = out / PLOT_NAME
    _plot(report, report.plot_path, sigma)
    summary = report.summary() | {"sigma": sigma, **settings}
    (out / SUMMARY_NAME).write_text(json.dumps(summary, indent=2))


def _write_tsv(path: Path, rows: list[dict[str, Any]]) -> None:
    lines = ["idx\tlabel\tpredict\tradius\tcorrect\ttime\tsamples"]
    for r in rows:
        lines.append(
            f"{r['idx']}\t{r['label']}\t{r['predict']}\t{r['radius']:.6g}\t{r['correct']}\t"
            f"{r['time']:.4f}\t{r['samples']}"
        )
    path.write_text("\n".join(lines) + "\n")


def _plot(report: CertificationReport, path: Path, sigma: float) -> None:
    """Certified accuracy vs radius, drawn with the Agg canvas (no global pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 3.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(report.curve_radius, report.curve_accuracy, label=f"σ = {sigma:g}")
    xs = list(report.certified_accuracy)
    ax.plot(xs, [report.certified_accuracy[r] for r in xs], "o", color="C0")
    ax.set_xlabel("L2 radius")
    ax.set_ylabel("certified accuracy")
    ax.set_ylim(0.0, 1.0)
    ax.set_xlim(left=0.0)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(f"randomized smoothing ({report.num_examples} examples)")
    fig.tight_layout()
    fig.savefig(str(path), dpi=100)


__all__ = ["CertificationReport", "certify_dataset"]
