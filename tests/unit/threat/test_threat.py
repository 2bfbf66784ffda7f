"""ThreatModel: projection, steps, random starts and input validation."""

from __future__ import annotations

import pytest
import torch

from advtrain.threat import ThreatModel, check_input_batch, check_labels, project_l1_box


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_projection_lands_in_ball_and_box(norm: str) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(32, 3, 4, 4, generator=gen)
    far = x + 3 * torch.randn(x.shape, generator=gen)
    threat = ThreatModel(norm=norm, eps=0.5)
    proj = threat.project(far, x)
    assert bool(threat.contains(proj, x).all())
    # A point already inside is left where it is.
    inside = threat.project(x + 1e-3 * torch.sign(torch.randn(x.shape, generator=gen)) * 0, x)
    assert torch.equal(inside, x)


def test_l1_projection_is_exact_against_a_solver() -> None:
    """Compares with the projection computed by bisection on the dual variable in float64."""
    gen = torch.Generator().manual_seed(1)
    delta = torch.randn(16, 30, generator=gen, dtype=torch.float64)
    x = torch.rand(16, 30, generator=gen, dtype=torch.float64)
    eps = torch.full((16,), 1.5, dtype=torch.float64)
    out = project_l1_box(delta, x, eps, 0.0, 1.0)
    cap = torch.where(delta >= 0, 1 - x, x)
    lo, hi = torch.zeros(16, dtype=torch.float64), delta.abs().amax(1)
    for _ in range(200):
        mid = (lo + hi) / 2
        val = torch.minimum((delta.abs() - mid[:, None]).clamp_min(0), cap).sum(1)
        lo = torch.where(val > eps, mid, lo)
        hi = torch.where(val > eps, hi, mid)
    ref = torch.minimum((delta.abs() - hi[:, None]).clamp_min(0), cap) * delta.sign()
    boxed = torch.minimum(delta.abs(), cap) * delta.sign()
    ref = torch.where((boxed.abs().sum(1) <= eps)[:, None], boxed, ref)
    assert torch.allclose(out, ref, atol=1e-8)
    assert bool((out.abs().sum(1) <= eps + 1e-9).all())


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_ascent_direction_has_unit_norm(norm: str) -> None:
    grad = torch.randn(8, 1, 5, 5)
    step = ThreatModel(norm=norm, eps=1.0).ascent_direction(grad)
    if norm == "linf":
        assert torch.equal(step, grad.sign())
    else:
        p = 2 if norm == "l2" else 1
        assert torch.allclose(step.flatten(1).norm(p=p, dim=1), torch.ones(8), atol=1e-5)
        # Positive inner product with the gradient: an ascent direction.
        assert bool(((step * grad).flatten(1).sum(1) > 0).all())


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_random_start_is_inside_and_seeded(norm: str) -> None:
    x = torch.rand(64, 1, 6, 6)
    threat = ThreatModel(norm=norm, eps=0.3)
    a = threat.random_start(x, torch.Generator().manual_seed(3))
    b = threat.random_start(x, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert bool(threat.contains(a, x).all())
    assert not torch.equal(a, x)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"eps": -0.1}, ValueError, ">= 0"),
        ({"eps": float("nan")}, ValueError, "finite"),
        ({"eps": "big"}, TypeError, "real number"),
        ({"norm": "l3"}, ValueError, "norm must be one of"),
        ({"bounds": (1.0, 0.0)}, ValueError, "low < high"),
        ({"bounds": (0.0,)}, ValueError, "pair"),
    ],
)
def test_bad_threat_models_are_refused(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        ThreatModel(**kwargs)


def test_input_checks_name_the_problem() -> None:
    with pytest.raises(ValueError, match="outside bounds"):
        check_input_batch(torch.full((2, 3), 255.0), (0.0, 1.0))
    with pytest.raises(ValueError, match="NaN"):
        check_input_batch(torch.tensor([[0.5, float("nan")]]), (0.0, 1.0))
    with pytest.raises(ValueError, match="NaN or infinite"):
        check_input_batch(torch.tensor([[0.5, float("inf")]]), None)
    with pytest.raises(TypeError, match="floating-point"):
        check_input_batch(torch.zeros(2, 3, dtype=torch.uint8), (0.0, 1.0))
    with pytest.raises(ValueError, match="batch dimension"):
        check_input_batch(torch.zeros(3), (0.0, 1.0))
    with pytest.raises(TypeError, match="integer class indices"):
        check_labels(torch.zeros(2), 2)
    with pytest.raises(ValueError, match="shape"):
        check_labels(torch.zeros(3, dtype=torch.long), 2)
    with pytest.raises(ValueError, match=r"lie in \[0, 10\)"):
        check_labels(torch.tensor([0, 10]), 2, num_classes=10)


def test_clipping_to_the_linf_limits_is_the_linf_projection() -> None:
    gen = torch.Generator().manual_seed(5)
    x = torch.rand(16, 3, 4, 4, generator=gen)
    far = x + torch.randn(x.shape, generator=gen)
    threat = ThreatModel(norm="linf", eps=0.1)
    lo, hi = threat.linf_limits(x)
    clipped = far.clone().clamp_(lo, hi)
    assert bool(threat.contains(clipped, x, atol=0).all())
    torch.testing.assert_close(clipped, threat.project(far, x), rtol=0, atol=1e-6)
    # the limits of a point near the box's edge are the box's
    assert float(lo.min()) >= 0 and float(hi.max()) <= 1
    assert torch.equal(x.clone().clamp_(lo, hi), x)  # x itself is left where it is
    with pytest.raises(ValueError, match="linf"):
        ThreatModel(norm="l2", eps=0.1).linf_limits(x)


def test_the_in_place_linf_ascent_step_is_the_projected_step() -> None:
    gen = torch.Generator().manual_seed(6)
    x = torch.rand(8, 3, 4, 4, generator=gen)
    threat = ThreatModel(norm="linf", eps=0.1)
    x_adv = threat.random_start(x, gen)
    grad = torch.randn(x.shape, generator=gen)
    expected = threat.ascent_step(x_adv, grad, 0.07, x)  # new tensors
    assert not torch.equal(expected, x_adv)
    stepped = threat.ascent_step(x_adv.clone(), grad.clone(), 0.07, x, threat.linf_limits(x))
    torch.testing.assert_close(stepped, expected, rtol=0, atol=1e-6)
    assert bool(threat.contains(stepped, x, atol=0).all())
