"""The confidence interval that the benchmarks (``scripts/bench/timing.py``) put on a median time
ratio, their verdict, the per-step estimate and the interleaving order.

The interval ``[v_(k), v_(n-k+1)]`` of the sorted per-pair ratios covers the median with
probability ``1 - 2 P(Binomial(n, 1/2) <= k - 1)`` whatever the distribution; ``k`` must be the
largest rank that keeps this at 95% or more (a smaller one gives a needlessly wide interval, a
larger one an over-confident verdict on the 1.05 target).
"""

from __future__ import annotations

import importlib
import random
from pathlib import Path

import pytest
from scipy import stats

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def timing():  # type: ignore[no-untyped-def]
    """``scripts.bench.timing``, imported from the repository root."""
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(ROOT))
        return importlib.import_module("scripts.bench.timing")


@pytest.fixture(scope="module")
def median_interval(timing):  # type: ignore[no-untyped-def]
    return timing.median_interval


def test_known_ranks(median_interval) -> None:  # type: ignore[no-untyped-def]
    values = [float(i) for i in range(10)]  # n = 10: the textbook ranks are 2 and 9
    assert median_interval(values) == (4.5, 1.0, 8.0)
    assert median_interval([float(i) for i in range(20)])[1:] == (5.0, 14.0)  # ranks 6 and 15
    assert median_interval([3.0, 1.0, 2.0]) == (2.0, 1.0, 3.0)  # too few: the full range


@pytest.mark.parametrize("n", [6, 7, 10, 17, 30, 40, 60, 101])
def test_coverage_is_at_least_95_percent_and_the_rank_is_the_largest_that_keeps_it(
    median_interval, n: int
) -> None:  # type: ignore[no-untyped-def]
    values = [float(i) for i in range(n)]
    _, low, high = median_interval(values)
    k = int(low) + 1  # the lower end's rank
    assert high == values[n - k]
    coverage = 1 - 2 * stats.binom.cdf(k - 1, n, 0.5)
    assert coverage >= 0.95
    assert 1 - 2 * stats.binom.cdf(k, n, 0.5) < 0.95  # one rank further in would not cover


def test_empirical_coverage(median_interval) -> None:  # type: ignore[no-untyped-def]
    rng = random.Random(0)
    covered = 0
    trials = 2000
    for _ in range(trials):  # skewed ratios around a true median of 1.0
        values = [rng.lognormvariate(0.0, 0.1) for _ in range(30)]
        _, low, high = median_interval(values)
        covered += low <= 1.0 <= high
    assert covered / trials >= 0.94  # nominal 95.7% for n = 30 (binomial sd ~0.5%)


def test_step_quantile(timing) -> None:  # type: ignore[no-untyped-def]
    """The per-step estimate is the low quantile of the steps' times."""
    step_quantile = timing.step_quantile
    steps = [float(v) for v in range(100, 0, -1)]  # 1..100, unsorted
    assert step_quantile(steps) == 11.0  # ten steps are faster
    assert step_quantile(steps, q=0.0) == 1.0
    assert step_quantile([5.0]) == 5.0
    # a burst that slows most steps does not move it while over a tenth stay undisturbed
    assert step_quantile([1.0] * 20 + [9.0] * 80) == 1.0


def test_verdict_needs_six_pairs_and_judges_the_whole_interval(timing) -> None:  # type: ignore[no-untyped-def]
    summary = timing.RatioSummary.of
    assert summary([1.0] * 5).verdict() == "few pairs"  # no 95% interval below 6 pairs
    assert summary([1.0] * 10).verdict() == "ok"
    assert summary([1.0] * 9 + [2.0]).verdict() == "ok"  # the outlier lies outside the interval
    assert summary([1.04] * 5 + [1.2] * 4).verdict() == "at the mark"  # only the median is under
    assert summary([1.06] * 10).verdict() == "over"
    assert str(summary([float(i) for i in range(10)])) == "4.500 [1.000, 8.000]"


def test_interleaved_pairs_alternate_the_order(timing) -> None:  # type: ignore[no-untyped-def]
    calls: list[str] = []
    pairs = timing.interleaved_pairs(
        lambda: calls.append("a"), lambda: calls.append("b"), repeats=4, warmup=1
    )
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b", "b", "a"]  # warm-up, then pairs
    assert len(pairs.a) == len(pairs.b) == 4 and len(pairs.ratios("cpu")) == 4
    assert timing.rotation(["x", "y", "z"], 4) == ["y", "z", "x"]


def test_markdown_table(timing) -> None:  # type: ignore[no-untyped-def]
    assert timing.markdown_table(["a", "b"], [[1, "x"]]) == "| a | b |\n|---|---|\n| 1 | x |"
