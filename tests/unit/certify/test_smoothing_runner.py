"""The data-set runner (TSV, curve, PNG) and the digits demonstration of randomized smoothing."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from smoothing_helpers import (
    Constant,
    digits_split,
    half_space,
    noise_trained_digits,
    one_thread,
    train_digits,
)
from torch.utils.data import TensorDataset

from advtrain.certify import CertificationReport, Smooth, certify_dataset
from advtrain.metrics import certified_accuracy


def _half_space_data(count: int = 12) -> tuple[Smooth, torch.Tensor, torch.Tensor, np.ndarray]:
    model = half_space(dim=6, seed=2)
    dists = np.linspace(-1.2, 1.2, count)
    x = torch.stack([model.point_at(float(d)) for d in dists])
    y = torch.as_tensor((dists > 0).astype(np.int64))
    return Smooth(model, 2, 0.5, seed=0), x, y, dists


def test_runner_writes_cohen_tsv_plot_and_summary(tmp_path) -> None:
    smooth, x, y, dists = _half_space_data()
    y[0] = 1  # one wrong label: never counted as certified
    report = certify_dataset(
        smooth,
        (x, y),
        n0=50,
        n=2_000,
        alpha=0.001,
        batch_size=500,
        out_dir=tmp_path,
        progress=False,
    )
    assert isinstance(report, CertificationReport) and report.num_examples == 12
    lines = (tmp_path / "certify.tsv").read_text().strip().split("\n")
    assert lines[0].split("\t") == [
        "idx",
        "label",
        "predict",
        "radius",
        "correct",
        "time",
        "samples",
    ]
    rows = [line.split("\t") for line in lines[1:]]
    assert [int(r[0]) for r in rows] == list(range(12))
    assert all(int(r[6]) == 2_050 for r in rows)
    assert int(rows[0][4]) == 0
    radii = np.array([float(r[3]) for r in rows])
    assert np.all(radii <= np.abs(dists) + 1e-6)  # sound against the exact radius
    preds = torch.tensor([int(r[2]) for r in rows])
    for r in report.radii:
        expected = certified_accuracy(preds, torch.tensor(radii), y, r).item()
        assert report.certified_accuracy[r] == pytest.approx(expected, abs=1e-6)
    # the curve is a non-increasing step function starting at the clean accuracy
    assert report.curve_radius[0] == 0.0
    assert report.curve_accuracy[0] == pytest.approx(report.certified_accuracy[0.0])
    assert np.all(np.diff(report.curve_accuracy) <= 0)
    png = (tmp_path / "certified_accuracy.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5_000
    summary = json.loads((tmp_path / "certify_summary.json").read_text())
    assert summary["num_examples"] == 12 and summary["n"] == 2_000


def test_runner_skip_max_examples_and_datasets() -> None:
    smooth, x, y, _ = _half_space_data()
    report = certify_dataset(
        smooth,
        TensorDataset(x, y),
        n0=20,
        n=200,
        alpha=0.01,
        batch_size=100,
        skip=5,
        max_examples=2,
        progress=True,
        radii=(0.0, 0.1),
    )
    assert [r["idx"] for r in report.rows] == [0, 5]
    assert set(report.certified_accuracy) == {0.0, 0.1}
    assert 0 <= report.clean_accuracy <= 1


def test_runner_sequential_mode_reports_its_samples() -> None:
    smooth, x, y, _ = _half_space_data()
    report = certify_dataset(
        smooth,
        (x, y),
        n0=50,
        n=4_000,
        alpha=0.001,
        batch_size=1_000,
        mode="sequential",
        radius=0.25,
        progress=False,
    )
    assert report.mean_samples < 0.5 * 4_050
    with pytest.raises(ValueError, match="radius"):
        certify_dataset(smooth, (x, y), 10, 100, 0.01, 100, mode="sequential", progress=False)


def test_runner_rejects_bad_arguments() -> None:
    smooth, x, y, _ = _half_space_data()
    with pytest.raises(TypeError, match="Smooth"):
        certify_dataset(Constant(), (x, y), progress=False)
    with pytest.raises(TypeError, match="dataset"):
        certify_dataset(smooth, x, progress=False)
    with pytest.raises(ValueError, match="same length"):
        certify_dataset(smooth, (x, y[:3]), progress=False)
    with pytest.raises(ValueError, match="skip"):
        certify_dataset(smooth, (x, y), skip=0, progress=False)
    with pytest.raises(ValueError, match="radii"):
        certify_dataset(smooth, (x, y), radii=(-1.0,), progress=False)
    with pytest.raises(ValueError, match="label"):
        certify_dataset(smooth, (x, y + 5), n0=10, n=100, progress=False)


# -- digits: Gaussian-noise training, then certification ------------------------------------------
def test_digits_noise_trained_model_certifies_quickly() -> None:
    """Fast version of the demonstration: 60 test digits, n = 1,000 (max radius σ·2.46)."""
    model = noise_trained_digits(0.25, 30)
    _, _, x_test, y_test = digits_split()
    with one_thread():
        standard = certify_dataset(
            Smooth(model, 10, 0.25, seed=0),
            (x_test, y_test),
            n0=100,
            n=1_000,
            alpha=0.001,
            batch_size=1_100,
            skip=6,
            progress=False,
        )
        sequential = certify_dataset(
            Smooth(model, 10, 0.25, seed=0),
            (x_test, y_test),
            n0=100,
            n=1_000,
            alpha=0.001,
            batch_size=1_100,
            skip=6,
            progress=False,
            mode="sequential",
            radius=0.25,
        )
    acc = standard.certified_accuracy
    assert standard.num_examples == 60
    assert acc[0.0] >= 0.9 and acc[0.25] >= 0.8 and acc[0.5] >= 0.45
    assert acc[0.75] == 0.0  # beyond σ·Φ⁻¹(0.001^(1/1000)) = 0.61: nothing can be certified
    assert sequential.certified_accuracy[0.25] >= acc[0.25] - 0.04
    assert sequential.mean_samples <= 0.5 * 1_100


@pytest.mark.slow
def test_digits_demonstration_full_test_set() -> None:
    """The issue's demonstration: σ = 0.25, 360 test digits, n0 = 100, n = 10,000, alpha = 0.001.

    Target: certified accuracy >= 88 % at r = 0.25 and >= 60 % at r = 0.5 (Cohen et al.'s
    reference code gives 97.2 / 90.0 / 62.8 / 16.4 % at r = 0 / 0.25 / 0.5 / 0.75 here).
    Measured (60 epochs): 98.6 / 90.6 / 62.8 / 12.5 %; 40 epochs gave 97.8 / 88.6 / 61.9 / 15.3 %
    and 30 epochs 97.2 / 87.5 / 59.4 / 10.8 %.
    """
    start = time.perf_counter()
    model = train_digits(0.25, epochs=60)
    _, _, x_test, y_test = digits_split()
    with one_thread():
        report = certify_dataset(
            Smooth(model, 10, 0.25, seed=0),
            (x_test, y_test),
            n0=100,
            n=10_000,
            alpha=0.001,
            batch_size=1_000,
            progress=False,
        )
    acc = report.certified_accuracy
    print(f"digits certified accuracy {acc} in {time.perf_counter() - start:.0f} s")
    assert report.num_examples == 360
    assert acc[0.25] >= 0.88 and acc[0.5] >= 0.60
