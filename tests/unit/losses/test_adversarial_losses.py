"""AdversarialLoss, TRADESLoss and MARTLoss: formulas, gradients, model state, errors, training."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator

import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import Tensor, nn

from advtrain.attacks import PGD, Attack
from advtrain.attacks.trades import TRADESAttack
from advtrain.losses import AdversarialLoss, MARTLoss, TRADESLoss
from advtrain.losses.base import TrainingLoss
from advtrain.models import SmallCNN


class FixedShift(Attack):
    """A deterministic 'attack': ``x + eps·direction`` projected onto the ball and box.

    Makes ``x'`` known in advance, so the loss formulas can be checked by hand.
    """

    def __init__(self, direction: Tensor, eps: float, bounds: tuple[float, float]) -> None:
        super().__init__(eps=eps, norm="linf", bounds=bounds)
        self.direction = direction

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        return self.threat.project(x + self.eps * self.direction.to(x), x)


class ModeRecorder(nn.Module):
    """Records the ``training`` flag seen by each forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[bool] = []

    def forward(self, x: Tensor) -> Tensor:
        self.seen.append(self.training)
        return x


def bn_model(seed: int = 0) -> nn.Sequential:
    """A small model with BatchNorm, Dropout and a mode recorder, on 8×8 inputs."""
    torch.manual_seed(seed)
    return nn.Sequential(
        ModeRecorder(),
        nn.Flatten(),
        nn.Linear(64, 32),
        nn.BatchNorm1d(32),
        nn.ReLU(),
        nn.Dropout(0.1),
        nn.Linear(32, 10),
    )


@pytest.fixture(scope="module")
def digits() -> tuple[Tensor, Tensor]:
    data = load_digits()
    x = torch.tensor(data.data / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
    return x, torch.tensor(data.target)


@pytest.fixture()
def one_thread() -> Iterator[None]:
    """Tiny models train ~10x faster on one thread when the CPU is shared; restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture()
def batch(digits: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    x, y = digits
    return x[:32].clone(), y[:32].clone()


def make_losses() -> dict[str, TrainingLoss]:
    return {
        "adversarial": AdversarialLoss(PGD(eps=0.1, steps=3, seed=0)),
        "adversarial-mixed": AdversarialLoss(PGD(eps=0.1, steps=3, seed=0), clean_weight=0.5),
        "trades": TRADESLoss(beta=6.0, eps=0.1, steps=3),
        "mart": MARTLoss(beta=6.0, eps=0.1, steps=3),
    }


LOSS_NAMES = list(make_losses())
EXPECTED_LOGS = {
    "adversarial": {"loss/adv", "acc/adv"},
    "adversarial-mixed": {"loss/adv", "acc/adv", "loss/clean", "acc/clean"},
    "trades": {"loss/natural", "loss/robust", "acc/clean", "acc/adv"},
    "mart": {"loss/adv", "loss/bce", "loss/robust", "acc/clean", "acc/adv"},
}


# -- the contract shared by all losses --------------------------------------------------------


@pytest.mark.parametrize("name", LOSS_NAMES)
@pytest.mark.parametrize("train_mode", [True, False])
def test_gradients_flow_and_state_is_kept(
    name: str, train_mode: bool, batch: tuple[Tensor, Tensor]
) -> None:
    loss_fn = make_losses()[name]
    model = bn_model()
    model.train(train_mode)
    recorder = model[0]
    x, y = batch
    x0, y0 = x.clone(), y.clone()
    modes = [m.training for m in model.modules()]
    requires = [p.requires_grad for p in model.parameters()]

    loss, logs = loss_fn(model, x, y)

    # Inputs untouched, modes and requires_grad flags as found, no .grad written by the loss.
    assert torch.equal(x, x0) and torch.equal(y, y0)
    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in model.parameters()] == requires
    assert all(p.grad is None for p in model.parameters())
    # The attack ran in eval mode (PGD's and TRADES' default bn_mode); the loss's forward passes
    # ran in the model's own mode.
    n_loss_passes = 1 if name == "adversarial" else 2
    assert recorder.seen[-n_loss_passes:] == [train_mode] * n_loss_passes
    assert recorder.seen[:-n_loss_passes] and not any(recorder.seen[:-n_loss_passes])

    assert loss.dim() == 0 and torch.isfinite(loss)
    assert set(logs) == EXPECTED_LOGS[name]
    for key, value in logs.items():
        assert isinstance(value, Tensor) and value.dim() == 0 and not value.requires_grad, key
        if key.startswith("acc/"):
            assert 0.0 <= float(value) <= 1.0
    loss.backward()
    for p in model.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()
    assert sum(float(p.grad.abs().sum()) for p in model.parameters()) > 0


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_model_not_returning_logits_raises(name: str, batch: tuple[Tensor, Tensor]) -> None:
    x, y = batch

    class TupleOut(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))

        def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
            z = self.net(x)
            return z, z

    loss_fn = make_losses()[name]
    # The attack's own check or the loss's fires first; either way a ValueError about the logits.
    with pytest.raises(ValueError, match=r"logits"):
        loss_fn(TupleOut(), x, y)
    flat = nn.Sequential(nn.Flatten(), nn.Linear(64, 10), nn.Flatten(0))
    with pytest.raises(ValueError, match=r"logits of shape \(batch, num_classes"):
        loss_fn(flat, x, y)


def test_loss_checks_logits_itself(batch: tuple[Tensor, Tensor]) -> None:
    """With a no-op attack (eps 0) the loss's own check reports a non-tensor output."""
    x, y = batch
    loss_fn = AdversarialLoss(PGD(eps=0.0, steps=1))

    class DictOut(nn.Module):
        def forward(self, x: Tensor) -> dict[str, Tensor]:
            return {"logits": x.flatten(1)[:, :10]}

    with pytest.raises(ValueError, match="wrap it so that forward returns only the logits"):
        loss_fn(DictOut(), x, y)
    with pytest.raises(TypeError, match=r"torch\.nn\.Module"):
        loss_fn(lambda t: t, x, y)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"shapes"):
        loss_fn(nn.Flatten(), x, y[:5])


def test_probability_outputs_warn(batch: tuple[Tensor, Tensor]) -> None:
    x, y = batch
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10), nn.Softmax(dim=1))
    loss_fn = AdversarialLoss(PGD(eps=0.0, steps=1))
    with pytest.warns(UserWarning, match="probabilities"):
        loss_fn(model, x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss_fn(model, x, y)  # checked once per loss object
        AdversarialLoss(PGD(eps=0.0, steps=1))(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), x, y)


@pytest.mark.parametrize("cls", [TRADESLoss, MARTLoss])
def test_beta_validation(cls: Callable[..., TrainingLoss]) -> None:
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="beta must be a finite number >= 0"):
            cls(beta=bad, eps=0.1)
    with pytest.raises(TypeError, match="beta must be a real number"):
        cls(beta="six", eps=0.1)
    loss_fn = cls(beta=1.0, eps=0.1)
    loss_fn.beta = 3  # what a schedule does
    assert loss_fn.beta == 3.0
    with pytest.raises(ValueError, match=">= 0"):
        loss_fn.beta = -0.5
    assert loss_fn.beta == 3.0
    with pytest.raises(ValueError, match="not both"):
        cls(attack=PGD(eps=0.1), eps=0.2)
    with pytest.raises(TypeError, match="advtrain Attack"):
        cls(attack=lambda m, x, y: x)


def test_adversarial_loss_validation() -> None:
    with pytest.raises(TypeError, match="advtrain Attack"):
        AdversarialLoss("pgd")  # type: ignore[arg-type]
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="clean_weight"):
            AdversarialLoss(PGD(eps=0.1), clean_weight=bad)


def test_default_attacks_and_conveniences() -> None:
    trades = TRADESLoss()
    assert isinstance(trades.attack, TRADESAttack)
    assert trades.attack.eps == pytest.approx(8 / 255) and trades.attack.steps == 10
    trades = TRADESLoss(eps=0.3, steps=40, alpha=0.01)
    assert (trades.attack.eps, trades.attack.steps, trades.attack.alpha) == (0.3, 40, 0.01)
    mart = MARTLoss()
    assert isinstance(mart.attack, PGD) and mart.attack.loss == "ce"
    assert mart.attack.eps == pytest.approx(8 / 255) and mart.attack.steps == 10
    assert mart.attack.alpha == pytest.approx(2 / 255)
    assert MARTLoss(eps=0.3, steps=40, alpha=0.01).attack.alpha == 0.01
    # A schedule drives eps through the attack.
    mart.attack.eps = 0.05
    assert mart.attack.eps == 0.05
    assert "beta=6" in repr(mart) and "PGD" in repr(mart)


# -- formulas ----------------------------------------------------------------------------------


def fixed_logit_setup(seed: int = 0) -> tuple[nn.Module, Tensor, Tensor, Tensor]:
    """A linear model on 6 features with a known perturbation: returns model, x, x', y."""
    g = torch.Generator().manual_seed(seed)
    model = nn.Linear(6, 4)
    with torch.no_grad():
        model.weight.copy_(torch.randn(4, 6, generator=g) * 2)
        model.bias.copy_(torch.randn(4, generator=g))
    x = torch.rand(8, 6, generator=g)
    y = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    direction = torch.randn(8, 6, generator=g).sign()
    x_adv = (x + 0.5 * direction).clamp(-3, 3)
    return model, x, x_adv, y


def test_adversarial_loss_formula() -> None:
    model, x, x_adv, y = fixed_logit_setup()
    attack = FixedShift((x_adv - x) / 0.5, eps=0.5, bounds=(-3.0, 3.0))
    for w in (0.0, 0.3, 1.0):
        loss, logs = AdversarialLoss(attack, clean_weight=w)(model, x, y)
        expected = (1 - w) * F.cross_entropy(model(x_adv), y) + w * F.cross_entropy(model(x), y)
        assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
        assert float(logs["loss/adv"]) == pytest.approx(F.cross_entropy(model(x_adv), y).item())


def test_trades_formula_and_gradients() -> None:
    """CE(f(x)) + beta·sum_c p(x) log(p(x)/p(x')) / batch, gradients through both outputs."""
    model, x, x_adv, y = fixed_logit_setup(1)
    attack = FixedShift((x_adv - x) / 0.5, eps=0.5, bounds=(-3.0, 3.0))
    loss, logs = TRADESLoss(beta=2.5, attack=attack)(model, x, y)
    loss.backward()
    got = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()

    p = torch.softmax(model(x), dim=1)
    q = torch.softmax(model(x_adv), dim=1)
    kl = (p * (p.log() - q.log())).sum() / x.shape[0]
    expected = -p.gather(1, y[:, None]).log().mean() + 2.5 * kl
    expected.backward()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert float(logs["loss/robust"]) == pytest.approx(kl.item(), rel=1e-5)
    assert kl.item() > 0.01  # the perturbation matters, so the check has teeth
    for g, p_ in zip(got, model.parameters(), strict=True):
        torch.testing.assert_close(g, p_.grad, rtol=1e-4, atol=1e-6)


def test_trades_beta_zero_is_clean_cross_entropy(batch: tuple[Tensor, Tensor]) -> None:
    x, y = batch
    torch.manual_seed(0)
    model = SmallCNN(width=8, hidden=32)
    loss, logs = TRADESLoss(beta=0.0, eps=0.1, steps=2)(model, x, y)
    expected = F.cross_entropy(model(x), y)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert float(logs["loss/natural"]) == pytest.approx(expected.item(), rel=1e-6)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    expected_grads = torch.autograd.grad(expected, list(model.parameters()))
    for a, b in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(a, b)


def test_mart_formula_on_fixed_logits() -> None:
    """BCE(x') + beta·mean(KL(p(x) || p(x'))·(1 - p_y(x))), computed directly on probabilities."""
    logits_nat = torch.tensor([[2.0, 0.5, -1.0, 0.0], [0.1, 0.2, 3.0, -2.0], [1.0, 1.0, 1.0, 1.0]])
    logits_adv = torch.tensor([[0.5, 1.5, -1.0, 0.2], [0.0, 2.5, 1.0, -1.0], [2.0, -1.0, 0.0, 0.5]])
    y = torch.tensor([0, 2, 1])
    # The identity model returns its input as logits; FixedShift moves x to exactly logits_adv.
    attack = FixedShift((logits_adv - logits_nat) / 3.0, eps=3.0, bounds=(-10.0, 10.0))
    beta = 5.0
    loss, logs = MARTLoss(beta=beta, attack=attack)(nn.Identity(), logits_nat, y)

    expected_bce, expected_robust = 0.0, 0.0
    for i in range(3):
        p = [math.exp(v) for v in logits_nat[i].tolist()]
        p = [v / sum(p) for v in p]
        q = [math.exp(v) for v in logits_adv[i].tolist()]
        q = [v / sum(q) for v in q]
        yi = int(y[i])
        top_other = max(q[k] for k in range(4) if k != yi)
        expected_bce += -math.log(q[yi]) - math.log(1 - top_other)
        kl = sum(pc * math.log(pc / qc) for pc, qc in zip(p, q, strict=True))
        expected_robust += kl * (1 - p[yi])
    expected_bce /= 3
    expected_robust /= 3
    assert float(logs["loss/bce"]) == pytest.approx(expected_bce, rel=1e-5)
    assert float(logs["loss/robust"]) == pytest.approx(expected_robust, rel=1e-5)
    assert loss.item() == pytest.approx(expected_bce + beta * expected_robust, rel=1e-5)
    assert float(logs["acc/clean"]) == pytest.approx(2 / 3)  # row 3 is a tie -> class 0
    assert float(logs["acc/adv"]) == pytest.approx(0.0)


def test_mart_gradients_match_direct_formula() -> None:
    """Gradients flow through BCE, the KL and the weight 1 - p_y(x), as in the reference code."""
    model, x, x_adv, y = fixed_logit_setup(2)
    attack = FixedShift((x_adv - x) / 0.5, eps=0.5, bounds=(-3.0, 3.0))
    loss, _ = MARTLoss(beta=6.0, attack=attack)(model, x, y)
    got = torch.autograd.grad(loss, list(model.parameters()))

    p = torch.softmax(model(x), dim=1)
    q = torch.softmax(model(x_adv), dim=1)
    q_y = q.gather(1, y[:, None]).squeeze(1)
    top_other = q.scatter(1, y[:, None], -1.0).amax(dim=1)
    bce = (-q_y.log() - (1 - top_other).log()).mean()
    kl = (p * (p.log() - q.log())).sum(dim=1)
    expected = bce + 6.0 * (kl * (1 - p.gather(1, y[:, None]).squeeze(1))).mean()
    want = torch.autograd.grad(expected, list(model.parameters()))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_mart_is_finite_for_saturated_logits() -> None:
    """The log(1 - p_k) term stays finite when p_k rounds to 1 (the reference needs +1e-12)."""
    logits = torch.tensor([[0.0, 200.0, -5.0], [300.0, 0.0, 0.0]])
    y = torch.tensor([0, 1])
    attack = FixedShift(torch.zeros_like(logits), eps=0.0, bounds=(-1000.0, 1000.0))
    loss, logs = MARTLoss(beta=6.0, attack=attack)(nn.Identity(), logits, y)
    assert torch.isfinite(loss)
    # Row 1: -log p_0 = lse(0, 200, -5) and -log(1 - p_1) = -log(p_0 + p_2) = lse - lse(0, -5).
    # Row 2: -log p_1 = 300 + log(1 + 2e^-300) and -log(1 - p_0) = -log(p_1 + p_2) = 300 - log 2.
    lse1 = 200 + math.log1p(math.exp(-200) + math.exp(-205))
    row1 = lse1 + (lse1 - math.log1p(math.exp(-5)))
    row2 = 300.0 + (300.0 - math.log(2.0))
    assert float(logs["loss/bce"]) == pytest.approx((row1 + row2) / 2, rel=1e-6)


def test_state_dict_restores_attack_stream(batch: tuple[Tensor, Tensor]) -> None:
    x, y = batch
    torch.manual_seed(0)
    model = SmallCNN(width=8, hidden=32)
    loss_fn = MARTLoss(attack=PGD(eps=0.1, steps=2, seed=3))
    loss_fn(model, x, y)
    state = loss_fn.state_dict()
    a, _ = loss_fn(model, x, y)
    resumed = MARTLoss(attack=PGD(eps=0.1, steps=2, seed=3))
    resumed.load_state_dict(state)
    b, _ = resumed(model, x, y)
    assert a.item() == b.item()


# -- training on digits ------------------------------------------------------------------------


@pytest.mark.usefixtures("one_thread")
def test_trades_training_is_more_robust_than_standard(digits: tuple[Tensor, Tensor]) -> None:
    """A few epochs on digits: TRADES raises PGD-20 accuracy at eps 0.2 well above standard.

    Measured (5 epochs, SmallCNN width 16, seeds 0 and 1): standard 0.95–0.97 clean /
    0.02–0.03 robust; TRADES (beta 6, eps 0.2, 5 KL steps of 0.05) 0.89–0.90 clean / 0.40 robust.
    """
    x, y = digits
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    train_idx, test_idx = perm[:1200], perm[1200:]

    def standard(model: nn.Module, xb: Tensor, yb: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        return F.cross_entropy(model(xb), yb), {}

    def train(loss_fn: Callable[..., tuple[Tensor, dict[str, Tensor]]]) -> nn.Module:
        torch.manual_seed(0)
        model = SmallCNN(width=16, hidden=64)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        gen = torch.Generator().manual_seed(0)
        model.train()
        for _ in range(5):
            order = train_idx[torch.randperm(len(train_idx), generator=gen)]
            for i in range(0, len(order), 64):
                idx = order[i : i + 64]
                loss, _ = loss_fn(model, x[idx], y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        return model.eval()

    def accuracies(model: nn.Module) -> tuple[float, float]:
        xt, yt = x[test_idx], y[test_idx]
        x_adv = PGD(eps=0.2, steps=20, alpha=0.02, seed=0)(model, xt, yt)
        with torch.no_grad():
            clean = (model(xt).argmax(1) == yt).float().mean().item()
            robust = (model(x_adv).argmax(1) == yt).float().mean().item()
        return clean, robust

    std_clean, std_robust = accuracies(train(standard))
    trades_clean, trades_robust = accuracies(
        train(TRADESLoss(beta=6.0, eps=0.2, steps=5, alpha=0.05))
    )
    assert std_clean > 0.9
    assert trades_clean > 0.7
    assert trades_robust > std_robust + 0.2, (std_robust, trades_robust)
