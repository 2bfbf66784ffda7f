"""TRADES' KL attack: raises KL(f(x) || f(x')) well above its random start, stays in the threat
model, ignores the labels (but validates them) and leaves the model untouched."""

from __future__ import annotations

import pytest
import torch
from _square_fab_models import digits, standard_cnn
from torch import Tensor, nn

from advtrain.attacks import TRADESAttack
from advtrain.attacks.trades import kl_to_clean
from advtrain.threat import ThreatModel


@pytest.fixture(scope="module")
def std_model() -> nn.Module:
    return standard_cnn()


@pytest.fixture(scope="module")
def batch() -> tuple[Tensor, Tensor]:
    _, _, x, y = digits()
    return x[:128], y[:128]


def _kl(model: nn.Module, x: Tensor, x_adv: Tensor) -> Tensor:
    with torch.no_grad():
        return kl_to_clean(model(x), model(x_adv))


@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.1), ("l2", 0.5)])
def test_increases_kl_over_random_start(
    std_model: nn.Module, batch: tuple[Tensor, Tensor], norm: str, eps: float
) -> None:
    x, y = batch
    x_adv = TRADESAttack(eps=eps, norm=norm, seed=0)(std_model, x, y)
    # The random start alone: the same draw, then one step of negligible size.
    start = TRADESAttack(eps=eps, norm=norm, steps=1, alpha=1e-12, seed=0)(std_model, x, y)
    kl_adv, kl_start = _kl(std_model, x, x_adv), _kl(std_model, x, start)
    assert float((kl_adv > kl_start).float().mean()) >= 0.95
    assert float(kl_adv.mean()) > 100 * float(kl_start.mean())
    assert float(kl_adv.mean()) > 0.5
    assert bool(ThreatModel(norm, eps).contains(x_adv, x).all())


def test_random_start_is_clipped_into_ball_and_box(
    std_model: nn.Module, batch: tuple[Tensor, Tensor]
) -> None:
    x, y = batch
    for norm in ("linf", "l2"):
        # A huge start noise must still be projected into the ball and the box.
        x_adv = TRADESAttack(eps=0.05, norm=norm, steps=1, alpha=1e-12, init_std=5.0, seed=0)(
            std_model, x, y
        )
        assert bool(ThreatModel(norm, 0.05).contains(x_adv, x, atol=1e-6).all())
        assert float((x_adv - x).abs().amax()) > 0


def test_labels_are_not_used(std_model: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
    x, y = batch
    a = TRADESAttack(eps=0.1, seed=1)(std_model, x, y)
    b = TRADESAttack(eps=0.1, seed=1)(std_model, x, (y + 3) % 10)
    assert torch.equal(a, b)


def test_deterministic_in_train_mode_and_state_untouched(batch: tuple[Tensor, Tensor]) -> None:
    x, y = batch[0][:32], batch[1][:32]
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Dropout(0.5),
        nn.Linear(256, 10),
    )
    model.train()  # as inside a TRADES training step
    model[0].weight.grad = torch.ones_like(model[0].weight)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    a = TRADESAttack(eps=0.1, seed=0)(model, x, y)
    b = TRADESAttack(eps=0.1, seed=0)(model, x, y)
    assert torch.equal(a, b)  # eval mode during the attack: dropout off, running BN statistics
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(m.training for m in model.modules())
    assert torch.equal(model[0].weight.grad, torch.ones_like(model[0].weight))
    assert model[5].weight.grad is None
    assert all(p.requires_grad for p in model.parameters())


def test_works_under_no_grad_and_inference_mode(
    std_model: nn.Module, batch: tuple[Tensor, Tensor]
) -> None:
    x, y = batch[0][:16], batch[1][:16]
    ref = TRADESAttack(eps=0.1, steps=3, seed=0)(std_model, x, y)
    with torch.no_grad():
        a = TRADESAttack(eps=0.1, steps=3, seed=0)(std_model, x, y)
    with torch.inference_mode():
        b = TRADESAttack(eps=0.1, steps=3, seed=0)(std_model, x, y)
    assert torch.equal(ref, a) and torch.equal(ref, b)


def test_flat_inputs_supported() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 3))
    x = torch.rand(20, 5)
    y = torch.randint(0, 3, (20,))
    x_adv = TRADESAttack(eps=0.1, seed=0)(model, x, y)
    assert bool(ThreatModel("linf", 0.1).contains(x_adv, x).all())
    assert float(_kl(model, x, x_adv).mean()) > 0


def test_default_step_sizes() -> None:
    assert TRADESAttack(eps=0.031).alpha == pytest.approx(0.007)
    assert TRADESAttack(eps=0.3).alpha == pytest.approx(0.3 / 4.43, rel=1e-3)
    assert TRADESAttack(eps=0.5, norm="l2", steps=10).alpha == pytest.approx(0.1)
    attack = TRADESAttack(eps=0.031, alpha=0.01)
    assert attack.alpha == 0.01
    attack.alpha = None
    assert attack.alpha == pytest.approx(0.007)
    attack.eps = 0.062  # schedulable eps: the default step follows it
    assert attack.alpha == pytest.approx(0.014)
    assert TRADESAttack(eps=0.1).name == "trades-kl"


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"eps": -0.1}, ValueError),
        ({"norm": "l1"}, ValueError),
        ({"steps": 0}, ValueError),
        ({"alpha": 0.0}, ValueError),
        ({"alpha": "big"}, TypeError),
        ({"init_std": -1.0}, ValueError),
        ({"init_std": None}, TypeError),
        ({"bn_mode": "none"}, ValueError),
    ],
)
def test_bad_arguments(kwargs: dict, error: type[Exception]) -> None:
    with pytest.raises(error):
        TRADESAttack(**{"eps": 0.1, **kwargs})


def test_bad_inputs(std_model: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
    x, y = batch[0][:8], batch[1][:8]
    attack = TRADESAttack(eps=0.1, steps=2)
    with pytest.raises(ValueError, match="shape"):
        attack(std_model, x, y[:3])
    with pytest.raises(TypeError, match="integer class indices"):
        attack(std_model, x, y.float())
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\)"):
        attack(std_model, x, y + 10)
    with pytest.raises(ValueError, match="NaN"):
        attack(std_model, x * float("nan"), y)
    with pytest.raises(TypeError, match="floating-point"):
        attack(std_model, (x * 16).long(), y)
