"""FMN (Pintor et al., NeurIPS 2021): minimal norms against analytic answers, and bad input."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from advtrain.attacks import APGD, FMN


class Affine(nn.Module):
    """Two classes, logits ``(0, w·x + b)``: the boundary is the hyperplane ``w·x + b = 0``."""

    def __init__(self, w: Tensor, b: float) -> None:
        super().__init__()
        self.w = nn.Parameter(w.clone())
        self.b = nn.Parameter(torch.tensor(b))

    def forward(self, x: Tensor) -> Tensor:
        z = x.flatten(1) @ self.w + self.b
        return torch.stack([torch.zeros_like(z), z], dim=1)


def _problem() -> tuple[Affine, Tensor, Tensor]:
    torch.manual_seed(0)
    w = torch.randn(16)
    x = 0.35 + 0.3 * torch.rand(24, 1, 4, 4)  # far from the box's faces: the ball stays inside
    model = Affine(w, 0.0)
    with torch.no_grad():
        model.b.fill_(-float((x.flatten(1) @ w).median()))  # half of each class
        y = (model(x).argmax(1)).long()
    return model.eval(), x, y


@pytest.mark.parametrize(("norm", "dual"), [("linf", 1.0), ("l2", 2.0), ("l1", math.inf)])
def test_min_norm_is_the_distance_to_a_hyperplane(norm: str, dual: float) -> None:
    """The smallest Lp perturbation to the hyperplane is |w·x + b| / ||w||_q (q the dual norm):
    FMN's answer is never below it (its points are adversarial) and within 2% above it."""
    model, x, y = _problem()
    with torch.no_grad():
        exact = (x.flatten(1) @ model.w + model.b).abs() / model.w.norm(p=dual)
    inside = (exact < 0.3) & (exact > 1e-4)  # the ball around x stays inside the box
    assert int(inside.sum()) >= 8
    found = FMN(norm=norm, steps=100).min_norm(model, x, y)
    assert bool((found[inside] >= exact[inside] * (1 - 1e-4)).all())
    assert bool((found[inside] <= exact[inside] * 1.02 + 1e-6).all()), (found - exact)[inside]


def test_an_example_the_model_gets_wrong_has_norm_zero_and_an_unbeatable_one_inf() -> None:
    model, x, y = _problem()
    y_wrong = y.clone()
    y_wrong[:3] = 1 - y_wrong[:3]
    norms = FMN(steps=20).min_norm(model, x, y_wrong)
    assert torch.equal(norms[:3], torch.zeros(3))
    assert bool((norms[3:] > 0).all())

    constant = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    with torch.no_grad():
        constant[1].weight.zero_()
        constant[1].bias.copy_(torch.tensor([1.0, 0.0]))
    never = FMN(steps=20).min_norm(constant, x, torch.zeros(24, dtype=torch.long))
    assert bool(torch.isinf(never).all())


def test_called_as_an_attack_it_stays_in_the_ball_and_matches_apgd_on_a_linear_model() -> None:
    model, x, y = _problem()
    eps = 0.05
    x_adv = FMN(eps=eps, steps=100)(model, x, y)
    assert float((x_adv - x).abs().max()) <= eps + 1e-6
    with torch.no_grad():
        fmn_robust = model(x_adv).argmax(1) == y
        apgd_robust = model(APGD(eps=eps, steps=50, seed=0)(model, x, y)).argmax(1) == y
    assert torch.equal(fmn_robust, apgd_robust)  # a linear model: both find every point
    assert 0 < int(fmn_robust.sum()) < 24


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"steps": 0}, ValueError, "steps"),
        ({"gamma_init": 1.5}, ValueError, "gamma"),
        ({"alpha_init": -1.0}, ValueError, "alpha_init"),
        ({"alpha_init": "big"}, TypeError, "alpha_init"),
        ({"norm": "l0"}, ValueError, "norm"),
        ({"direction": "dlr"}, ValueError, "direction"),
    ],
)
def test_bad_settings_get_a_clear_error(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        FMN(**kwargs)


def test_a_model_whose_output_is_not_logits_gets_a_clear_error() -> None:
    _, x, y = _problem()
    with pytest.raises(ValueError, match="logits"):
        FMN(steps=2).min_norm(nn.Flatten(0), x, y)
    with pytest.raises(TypeError, match=r"torch\.nn\.Module"):
        FMN(steps=2).min_norm(lambda t: t, x, y)  # type: ignore[arg-type]
