"""Certified training on digits with IBPLoss / CROWNIBPLoss, and bound tightness on the result.

The loop is hand-written in :func:`bounds_helpers.train_certified_digits` (Gowal et al. 2018
schedule: warm-up, then eps ramped to 1.1 × 0.1 while kappa goes 1 → 0.5; CROWN-IBP also anneals
beta 1 → 0). Reference numbers on this split (one thread): IBP, 40 epochs: 96.7 % clean, 82.8 %
IBP-verified at Linf eps 0.1; CROWN-IBP, 40 epochs: 96.4 % clean, 82.5 % CROWN-IBP-verified
(83.3 % verified by any of IBP / CROWN-IBP / CROWN, vs 84.2 % for the IBP model): with this
loop's schedule (kappa 1 → 0.5 for both, a 50 % linear ramp) CROWN-IBP training does not beat IBP
training. With the CLI's paper schedules (``method=ibp`` / ``method=crown_ibp``, 40 epochs, seeds 0
and 1) it does: 79.2 / 79.4 % verified by any bound vs 73.9 / 74.4 % (BENCHMARKS.md).
"""

from __future__ import annotations

import pytest
import torch
from bounds_helpers import digits_split, train_certified_digits

from advtrain.certify import crown_bounds, interval_bounds, verified

EPS = 0.1


@pytest.fixture(autouse=True)
def _one_thread():
    """These tests use tiny tensors: one thread avoids contention on a shared CI machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _evaluate(model: torch.nn.Module, n_crown: int = 100) -> dict[str, float]:
    _, _, x, y = digits_split()
    with torch.no_grad():
        clean = (model(x).argmax(dim=1) == y).float().mean().item()
        ibp, _ = interval_bounds(model, x, EPS, labels=y)
        crown_ibp, _ = crown_bounds(model, x, EPS, labels=y, intermediate="ibp")
        crown, _ = crown_bounds(model, x[:n_crown], EPS, labels=y[:n_crown])
    mask = torch.ones_like(crown, dtype=torch.bool)
    mask[torch.arange(n_crown), y[:n_crown]] = False
    return {
        "clean": clean,
        "ibp": verified(ibp, y).float().mean().item(),
        "crown_ibp": verified(crown_ibp, y).float().mean().item(),
        "crown_tighter": (crown > ibp[:n_crown])[mask].float().mean().item(),
        "crown_ibp_tighter": (crown_ibp > ibp)[
            torch.ones_like(ibp, dtype=torch.bool).scatter(1, y[:, None], False)
        ]
        .float()
        .mean()
        .item(),
    }


def test_ibp_training_reaches_the_published_style_targets():
    model, seconds = train_certified_digits("ibp", epochs=40)
    stats = _evaluate(model)
    print(f"IBP training {seconds:.1f}s: {stats}")
    assert stats["clean"] >= 0.95
    assert stats["ibp"] >= 0.78
    # Verified examples are classified correctly (IBP is sound).
    assert stats["ibp"] <= stats["clean"]
    # On a trained network CROWN is tighter than IBP on most margins (79 % here).
    assert stats["crown_tighter"] >= 0.5


def test_crown_ibp_training_quick():
    model, seconds = train_certified_digits("crown_ibp", epochs=10)
    stats = _evaluate(model, n_crown=50)
    print(f"CROWN-IBP training (10 epochs) {seconds:.1f}s: {stats}")
    assert stats["clean"] >= 0.85
    assert stats["crown_ibp"] >= 0.45
    # A CROWN-IBP-trained network is certified better by CROWN-IBP than by IBP.
    assert stats["crown_ibp"] >= stats["ibp"]


@pytest.mark.slow
def test_crown_ibp_training_matches_ibp_training():
    ibp_model, _ = train_certified_digits("ibp", epochs=40)
    model, seconds = train_certified_digits("crown_ibp", epochs=40)
    stats = _evaluate(model)
    ibp_stats = _evaluate(ibp_model)
    print(f"CROWN-IBP training {seconds:.1f}s: {stats}; IBP training: {ibp_stats}")
    assert stats["clean"] >= 0.95
    assert stats["crown_ibp"] >= 0.78
    # Honest target: within 2 points of IBP training (82.5 % vs 82.8 % measured).
    assert max(stats["crown_ibp"], stats["ibp"]) >= ibp_stats["ibp"] - 0.02
