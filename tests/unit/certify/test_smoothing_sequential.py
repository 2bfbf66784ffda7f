"""Sequential certification: the 1 - alpha guarantee survives early stopping; fewer samples."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm
from smoothing_helpers import half_space

from advtrain.certify import SequentialTest, Smooth, look_schedule
from advtrain.certify.sequential import CERTIFIED, CONTINUE, NOT_CERTIFIED


def test_look_schedule_is_geometric_and_ends_at_n() -> None:
    assert look_schedule(10_000, 64, 2.0) == (64, 128, 256, 512, 1024, 2048, 4096, 8192, 10_000)
    assert look_schedule(100, 64, 2.0) == (64, 100)
    assert look_schedule(50, 64, 2.0) == (50,)
    assert look_schedule(10, 1, 1.5) == (1, 2, 3, 4, 6, 8, 10)
    with pytest.raises(ValueError, match="growth"):
        look_schedule(100, 10, 1.0)


def test_levels_spend_alpha_with_half_on_the_final_look() -> None:
    looks = look_schedule(10_000, 64, 2.0)
    test = SequentialTest(looks, 0.001, 0.9)
    assert sum(test.levels) == pytest.approx(0.001)
    assert test.levels[-1] == pytest.approx(0.0005)
    assert len(set(test.levels[:-1])) == 1
    uniform = SequentialTest(looks, 0.001, 0.9, final_share=1 / len(looks))
    assert uniform.levels == pytest.approx((0.001 / len(looks),) * len(looks))
    assert SequentialTest((100,), 0.01, 0.9).levels == (0.01,)
    with pytest.raises(ValueError, match="final_share"):
        SequentialTest(looks, 0.001, 0.9, final_share=0.0)
    with pytest.raises(ValueError, match="increasing"):
        SequentialTest((100, 50), 0.001, 0.9)


def _simulate(test: SequentialTest, p: float, runs: int, seed: int) -> tuple[float, float]:
    """Runs the sequential test on binomial counts; returns (certification rate, mean samples)."""
    rng = np.random.default_rng(seed)
    count = np.zeros(runs, dtype=np.int64)
    active = np.ones(runs, dtype=bool)
    certified = np.zeros(runs, dtype=bool)
    used = np.zeros(runs)
    drawn = 0
    for k, n_k in enumerate(test.looks):
        count[active] += rng.binomial(n_k - drawn, p, int(active.sum()))
        drawn = n_k
        idx = np.flatnonzero(active)
        decision, _ = test.decide(k, count[idx])
        certified[idx[decision == CERTIFIED]] = True
        used[idx[decision != CONTINUE]] = n_k
        active[idx[decision != CONTINUE]] = False
    assert not active.any()
    return float(certified.mean()), float(used.mean())


@pytest.mark.parametrize("target", [0.6, 0.84, 0.97])
def test_false_certification_rate_stays_below_alpha_with_bonferroni_looks(target: float) -> None:
    """At pA just below Φ(r/σ), certifying r is an error: its rate must stay <= alpha.

    The same simulation with the naive per-look level alpha (no split) exceeds alpha clearly,
    so this test can tell a valid procedure from an invalid one.
    """
    alpha, runs = 0.05, 6_000
    looks = look_schedule(1_000, 16, 2.0)
    p = target - 1e-9
    rate, _ = _simulate(SequentialTest(looks, alpha, target), p, runs, seed=0)
    se = math.sqrt(alpha * (1 - alpha) / runs)
    assert rate <= alpha + 3 * se
    k = len(looks)  # the naive test: every look at the full level alpha
    naive, _ = _simulate(SequentialTest(looks, alpha * k, target, final_share=1 / k), p, runs, 0)
    assert naive > alpha + 3 * se


def test_sequential_test_decides_early_on_clear_cases_and_keeps_power() -> None:
    looks = look_schedule(10_000, 64, 2.0)
    test = SequentialTest.for_radius(0.25, 0.25, looks, 0.001)  # target Φ(1) = 0.841
    assert test.target == pytest.approx(norm.cdf(1.0))
    rate, used = _simulate(test, 0.999, 2_000, seed=1)  # clearly certifiable
    assert rate == 1.0 and used <= 128
    rate, used = _simulate(test, 0.6, 2_000, seed=2)  # clearly not
    assert rate == 0.0 and used <= 128
    # Near the threshold the Bonferroni split costs a little power against the one-look test.
    standard = SequentialTest((10_000,), 0.001, test.target)
    for p, max_loss in ((0.86, 0.06), (0.87, 0.0)):
        rate, used = _simulate(test, p, 2_000, seed=3)
        rate_std, _ = _simulate(standard, p, 2_000, seed=3)
        assert rate >= rate_std - max_loss
        assert used < 10_000
    assert rate == 1.0 and used < 5_000


def test_decide_hopeless_target_stops_at_the_first_look() -> None:
    looks = look_schedule(1_000, 10, 2.0)
    test = SequentialTest(looks, 0.001, target=0.9999)  # unreachable with 1,000 samples
    decision, lower = test.decide(0, np.array([10]))
    assert decision.tolist() == [NOT_CERTIFIED]
    assert float(lower[0]) == pytest.approx(test.levels[0] ** (1 / 10))
    decision, _ = test.decide(len(looks) - 1, np.array([1_000]))  # the last look always decides
    assert decision.tolist() == [NOT_CERTIFIED]


def test_smooth_sequential_never_overstates_the_exact_radius_more_than_alpha() -> None:
    """Full pipeline on the half-space classifier, exact radius just below the requested one."""
    sigma, alpha, runs, r = 0.5, 0.1, 300, 0.5
    model = half_space(dim=4, seed=4)
    x = model.point_at(r * 0.999)
    batch = x.expand(runs, -1).clone()
    smooth = Smooth(model, 2, sigma, seed=6)
    results = smooth.certify_batch(batch, 20, 2_000, alpha, 100_000, "sequential", r, 16)
    certified = np.array([res.decision == "certified" for res in results])
    over = np.array([res.radius > r * 0.999 for res in results])
    bound = alpha + 3 * math.sqrt(alpha * (1 - alpha) / runs)
    assert certified.mean() <= bound
    assert over.mean() <= bound
    assert all(res.radius < r for res in results if res.decision != "certified")


def test_smooth_sequential_uses_fewer_samples_on_easy_examples_and_agrees_with_standard() -> None:
    sigma, n0, n = 0.25, 100, 10_000
    model = half_space(dim=16, seed=0)
    smooth = Smooth(model, 2, sigma, seed=0)
    easy = model.point_at(1.0)  # exact radius 1.0, ask for 0.25: pA = Φ(4)
    res = smooth.certify_detailed(easy, n0, n, 0.001, 2_000, mode="sequential", radius=0.25)
    assert res.decision == "certified" and res.prediction == 1
    assert 0.25 <= res.radius <= 1.0
    assert res.num_samples <= n0 + 128 and res.looks <= 2
    far = model.point_at(-0.05)  # exact radius 0.05, ask for 0.25: clearly not certifiable
    res = smooth.certify_detailed(far, n0, n, 0.001, 2_000, mode="sequential", radius=0.25)
    assert res.decision in ("not_certified", "abstain") and res.num_samples <= n0 + 512
    assert res.radius < 0.05
    close = model.point_at(0.27)  # exact 0.27 vs 0.25: needs the whole budget
    res = smooth.certify_detailed(close, n0, n, 0.001, 2_000, mode="sequential", radius=0.25)
    std = smooth.certify_detailed(close, n0, n, 0.001, 2_000, radius=0.25)
    assert res.n_estimation >= 4096
    assert std.decision == "certified" and std.looks == 1 and std.n_estimation == n
    assert res.radius <= 0.27 and std.radius <= 0.27


def test_sequential_at_radius_zero_matches_abstention_of_standard() -> None:
    model = half_space(dim=8, seed=1)
    smooth = Smooth(model, 2, 0.5, seed=0)
    x = model.point_at(0.0)  # pA = 1/2
    res = smooth.certify_detailed(x, 50, 4_000, 0.01, 1_000, mode="sequential", radius=0.0)
    assert res.prediction == -1 and res.decision == "abstain"
    res = smooth.certify_detailed(model.point_at(0.3), 50, 4_000, 0.01, 1_000, "sequential", 0.0)
    assert res.prediction == 1 and res.radius > 0 and res.n_estimation <= 128
