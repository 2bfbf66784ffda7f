"""Randomized smoothing (Cohen et al. 2019): PREDICT, CERTIFY, batching, validation, model state."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm
from smoothing_helpers import Constant, half_space, noise_trained_digits
from torch import nn

import advtrain.certify.smoothing as smoothing_module
from advtrain.certify import ABSTAIN, CertifyResult, Smooth
from advtrain.certify.sequential import pa_lower_bound, pa_upper_bound


# -- exact values ---------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 1000, 100_000])
def test_constant_classifier_certifies_closed_form_radius(n: int) -> None:
    sigma, alpha = 0.5, 0.001
    smooth = Smooth(Constant(3, cls=2), num_classes=3, sigma=sigma, seed=0)
    cls, radius = smooth.certify(torch.zeros(1, 4, 4), n0=10, n=n, alpha=alpha, batch_size=4096)
    expected = sigma * norm.ppf(alpha ** (1.0 / n))
    if expected <= 0:  # n = 1: alpha^(1/1) < 1/2, so CERTIFY must abstain
        assert (cls, radius) == (ABSTAIN, 0.0)
    else:
        assert cls == 2
        assert radius == pytest.approx(expected, abs=1e-9)


def test_clopper_pearson_bounds_match_scipy_binomtest() -> None:
    from scipy.stats import binomtest

    for k, n in [(0, 10), (3, 10), (10, 10), (9_870, 10_000)]:
        ci = binomtest(k, n).proportion_ci(confidence_level=0.99, method="exact")
        low = binomtest(k, n, alternative="greater").proportion_ci(0.99, "exact").low
        high = binomtest(k, n, alternative="less").proportion_ci(0.99, "exact").high
        assert float(pa_lower_bound(k, n, 0.01)) == pytest.approx(low, abs=1e-12)
        assert float(pa_upper_bound(k, n, 0.01)) == pytest.approx(high, abs=1e-12)
        assert ci.low <= low <= high <= ci.high


# -- the half-space classifier: exact smoothed radius ---------------------------------------------
@pytest.mark.parametrize("ratio", [0.25, 0.5, 1.0, 1.5, 2.0])
def test_half_space_radius_is_sound_and_tight(ratio: float) -> None:
    sigma = 0.4
    model = half_space(dim=16)
    true_radius = ratio * sigma  # pA = Φ(ratio) <= 0.977: not near 1
    for sign in (1.0, -1.0):
        x = model.point_at(sign * true_radius)
        assert model.signed_distance(x) == pytest.approx(sign * true_radius, abs=1e-5)
        smooth = Smooth(model, 2, sigma, seed=1)
        cls, radius = smooth.certify(x, n0=100, n=100_000, alpha=0.001, batch_size=25_000)
        assert cls == (1 if sign > 0 else 0)
        assert radius <= true_radius  # sound (fails with probability <= alpha)
        assert radius >= 0.9 * true_radius  # tight: within 10 %


def test_half_space_radius_is_sound_over_many_points() -> None:
    model = half_space(dim=8, seed=3)
    sigma = 0.5
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 8, generator=g)
    smooth = Smooth(model, 2, sigma, seed=2)
    results = smooth.certify_batch(x, n0=50, n=2_000, alpha=0.01, batch_size=50_000)
    exact = np.array([abs(model.signed_distance(xi)) for xi in x])
    radii = np.array([r.radius for r in results])
    over = radii > exact + 1e-6
    assert over.sum() <= 5  # expected <= 0.01 · 200 = 2 failures
    sides = np.array([model.signed_distance(xi) > 0 for xi in x])
    kept = np.array([r.prediction != ABSTAIN for r in results])
    preds = np.array([r.prediction for r in results])
    assert kept.mean() > 0.8
    assert np.all(preds[kept] == sides[kept].astype(int))


def test_standard_certify_false_certification_rate_is_at_most_alpha() -> None:
    """Over repeated runs at a known pA, a radius above the exact one appears <= alpha often."""
    sigma, alpha, runs = 0.5, 0.1, 400
    model = half_space(dim=4, seed=4)
    x = model.point_at(0.6 * sigma)
    batch = x.expand(runs, -1).clone()
    results = Smooth(model, 2, sigma, seed=5).certify_batch(batch, 20, 200, alpha, 100_000)
    rate = np.mean([r.radius > 0.6 * sigma for r in results])
    assert rate <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / runs)
    # ...and the radius is not trivially small: most runs certify at least half the exact radius.
    assert np.mean([r.radius > 0.3 * sigma for r in results]) > 0.5


# -- PREDICT --------------------------------------------------------------------------------------
def test_predict_abstains_on_a_fifty_fifty_classifier_and_answers_clear_cases() -> None:
    model = half_space(dim=16)
    smooth = Smooth(model, 2, sigma=0.25, seed=0)
    on_boundary = model.point_at(0.0)
    assert smooth.predict(on_boundary, n=2_000, alpha=0.001, batch_size=500) == ABSTAIN
    assert smooth.certify(on_boundary, 100, 2_000, 0.001, 500) == (ABSTAIN, 0.0)
    assert smooth.predict(model.point_at(0.3), n=2_000, alpha=0.001, batch_size=500) == 1
    assert smooth.predict(model.point_at(-0.3), n=2_000, alpha=0.001, batch_size=500) == 0
    batch = torch.stack([model.point_at(d) for d in (0.3, 0.0, -0.3)])
    assert smooth.predict_batch(batch, 2_000, 0.001, 777).tolist() == [1, ABSTAIN, 0]


def test_predict_binomial_test_uses_the_top_two_counts() -> None:
    class ThreeWay(nn.Module):
        """Class 0 or 1 with prob. 1/2 each by the sign of the first coordinate; never class 2."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            z = x.flatten(1)[:, 0]
            return torch.stack([z, -z, torch.full_like(z, -1e3)], dim=1)

    smooth = Smooth(ThreeWay(), 3, sigma=1.0, seed=0)
    assert smooth.predict(torch.zeros(5), 4_000, 0.001, 1_000) == ABSTAIN
    assert smooth.predict(torch.full((5,), 2.0), 4_000, 0.001, 1_000) == 0


# -- batching and sampling ------------------------------------------------------------------------
def test_certify_batch_packs_examples_without_mixing_their_counts() -> None:
    model = half_space(dim=6, seed=7)
    sigma = 0.5
    dists = [1.5, -1.5, 0.3, -0.4, 0.8]
    x = torch.stack([model.point_at(d) for d in dists])
    results = Smooth(model, 2, sigma, seed=0).certify_batch(x, 100, 3_000, 0.001, batch_size=333)
    for d, res in zip(dists, results, strict=True):
        p = norm.cdf(abs(d) / sigma)
        assert res.prediction == (1 if d > 0 else 0)
        assert res.n_estimation == 3_000 and res.num_samples == 3_100
        assert abs(res.count / 3_000 - p) < 4 * math.sqrt(p * (1 - p) / 3_000) + 1e-3


def test_counts_do_not_depend_on_flush_size(monkeypatch: pytest.MonkeyPatch) -> None:
    model = half_space(dim=6, seed=7)
    x = torch.stack([model.point_at(d) for d in (0.1, -0.2, 0.3)])
    full = Smooth(model, 2, 0.5, seed=3).certify_batch(x, 10, 2_000, 0.01, batch_size=128)
    monkeypatch.setattr(smoothing_module, "_FLUSH_SAMPLES", 256)
    small = Smooth(model, 2, 0.5, seed=3).certify_batch(x, 10, 2_000, 0.01, batch_size=128)
    assert full == small


def test_seed_makes_certification_reproducible() -> None:
    model = half_space(dim=6)
    x = model.point_at(0.2)
    a = Smooth(model, 2, 0.5, seed=11).certify_detailed(x, 100, 500, 0.01, 100)
    b = Smooth(model, 2, 0.5, seed=11).certify_detailed(x, 100, 500, 0.01, 100)
    c = Smooth(model, 2, 0.5, seed=12).certify_detailed(x, 100, 500, 0.01, 100)
    assert isinstance(a, CertifyResult)
    assert a == b
    assert a.count != c.count  # different noise


def test_input_shapes_single_example_and_batch_of_one() -> None:
    model = noise_trained_digits()
    smooth = Smooth(model, 10, 0.25, seed=0)
    x = torch.rand(1, 8, 8)
    one = smooth.certify(x, 20, 200, 0.01, 100)
    smooth.reseed(0)
    assert smooth.certify(x.unsqueeze(0), 20, 200, 0.01, 100) == one
    with pytest.raises(ValueError, match="certify_batch"):
        smooth.certify(torch.rand(2, 1, 8, 8), 20, 200, 0.01, 100)


# -- validation -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"sigma": 0.0}, ValueError, "sigma"),
        ({"sigma": -1.0}, ValueError, "sigma"),
        ({"sigma": float("nan")}, ValueError, "sigma"),
        ({"sigma": "0.5"}, TypeError, "sigma"),
        ({"num_classes": 1}, ValueError, "num_classes"),
        ({"num_classes": 2.5}, TypeError, "num_classes"),
        ({"model": lambda x: x}, TypeError, "nn.Module"),
    ],
)
def test_constructor_rejects_bad_arguments(kwargs: dict, error: type, match: str) -> None:
    args = {"model": Constant(3), "num_classes": 3, "sigma": 0.5} | kwargs
    with pytest.raises(error, match=match):
        Smooth(**args)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"alpha": 0.0}, ValueError, "alpha"),
        ({"alpha": 1.0}, ValueError, "alpha"),
        ({"n": 0}, ValueError, "n must be"),
        ({"n0": 0}, ValueError, "n0"),
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"mode": "fast"}, ValueError, "mode"),
        ({"mode": "sequential"}, ValueError, "radius=r"),
        ({"mode": "sequential", "radius": -0.1}, ValueError, "radius"),
        ({"mode": "sequential", "radius": 0.1, "growth": 1.0}, ValueError, "growth"),
    ],
)
def test_certify_rejects_bad_arguments(kwargs: dict, error: type, match: str) -> None:
    smooth = Smooth(Constant(3), 3, 0.5)
    args = {"n0": 10, "n": 100, "alpha": 0.01, "batch_size": 10} | kwargs
    with pytest.raises(error, match=match):
        smooth.certify(torch.zeros(4), **args)


def test_bad_inputs_and_model_outputs_raise_clear_errors() -> None:
    smooth = Smooth(Constant(3), 3, 0.5)
    x = torch.zeros(4)
    x[1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        smooth.certify(x, 10, 100, 0.01, 10)
    with pytest.raises(TypeError, match="floating"):
        smooth.predict(torch.zeros(4, dtype=torch.long), 100, 0.01, 10)
    with pytest.raises(ValueError, match="alpha"):
        smooth.predict(torch.zeros(4), 100, 1.5, 10)
    with pytest.raises(ValueError, match="num_classes=4"):
        Smooth(Constant(3), 4, 0.5).certify(torch.zeros(4), 10, 100, 0.01, 10)
    with pytest.raises(ValueError, match=r"\(batch, num_classes\)"):
        Smooth(nn.Flatten(0), 3, 0.5).certify(torch.zeros(4), 10, 100, 0.01, 10)


# -- the model is left exactly as found -----------------------------------------------------------
def _bn_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 3))
    model.train()
    model(torch.randn(16, 4))  # non-trivial running statistics
    return model


@pytest.mark.parametrize("layer", ["bn", "dropout"])
def test_training_mode_model_with_bn_or_dropout_is_refused(layer: str) -> None:
    model = _bn_model() if layer == "bn" else nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.5))
    model.train()
    with pytest.raises(ValueError, match=r"model\.eval\(\)"):
        Smooth(model, 3, 0.5).certify(torch.zeros(4), 10, 100, 0.01, 10)
    with pytest.raises(ValueError, match=r"model\.eval\(\)"):
        Smooth(model, 3, 0.5).predict(torch.zeros(4), 100, 0.01, 10)
    assert all(m.training for m in model.modules())


@pytest.mark.parametrize("force_eval", [False, True])
def test_model_state_is_unchanged(force_eval: bool) -> None:
    model = _bn_model()
    if not force_eval:
        model.eval()
    modes = [m.training for m in model.modules()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    requires = [p.requires_grad for p in model.parameters()]
    x = torch.randn(4)
    x_before = x.clone()
    smooth = Smooth(model, 3, 0.5, seed=0, force_eval=force_eval)
    res = smooth.certify_detailed(x, 10, 300, 0.01, 64)
    smooth.predict(x, 300, 0.01, 64)
    smooth.certify_batch(torch.randn(3, 4), 10, 300, 0.01, 64, mode="sequential", radius=0.1)
    assert res.num_samples == 310
    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in model.parameters()] == requires
    assert all(p.grad is None for p in model.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert torch.equal(x, x_before)


def test_train_mode_model_without_stochastic_layers_is_accepted_and_kept_in_train_mode() -> None:
    model = noise_trained_digits()
    model.train()
    try:
        cls, _ = Smooth(model, 10, 0.25, seed=0).certify(torch.zeros(1, 8, 8), 10, 100, 0.01, 50)
        assert model.training
        assert 0 <= cls < 10 or cls == ABSTAIN
    finally:
        model.eval()


def test_works_inside_inference_mode_and_on_inference_tensors() -> None:
    model = half_space(dim=6)
    with torch.inference_mode():
        x = model.point_at(0.5)
        assert x.is_inference()
        cls, radius = Smooth(model, 2, 0.5, seed=0).certify(x, 10, 500, 0.01, 100)
    assert cls == 1 and radius > 0
