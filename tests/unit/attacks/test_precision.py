"""Attacks under float16: per-example loss scaling keeps input gradients from underflowing.

A standard-trained digits SmallCNN classifies most test digits with a confidence whose
cross-entropy gradient at the logits is below float16's smallest value; without loss scaling
those examples get an exactly zero input gradient under ``torch.autocast(dtype=torch.float16)``
and a sign-gradient attack leaves them untouched (robust accuracy ~44% instead of ~1% at eps 0.2).
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from conftest import digits_split
from torch import Tensor, nn

from advtrain.attacks import APGD, PGD, TRADESAttack
from advtrain.attacks import pgd as pgd_module
from advtrain.attacks.checks import check_gradients
from advtrain.attacks.precision import loss_scaled_logits
from advtrain.models import SmallCNN

EPS = 0.2


@functools.lru_cache(maxsize=1)
def confident_model() -> tuple[nn.Module, Tensor, Tensor]:
    """A SmallCNN trained without attacks for 40 epochs (Adam 1e-3, batch 64), one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        x_tr, y_tr, x_te, y_te = digits_split(0)
        model = SmallCNN(input_shape=(1, 8, 8), num_classes=10)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        for _ in range(40):
            perm = torch.randperm(len(y_tr))
            for start in range(0, len(y_tr), 64):
                idx = perm[start : start + 64]
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(model(x_tr[idx]), y_tr[idx]).backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, x_te, y_te


def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return float((model(x.to(next(model.parameters()).dtype)).argmax(1) == y).float().mean())


def input_gradient(model: nn.Module, x: Tensor, y: Tensor, scaled: bool) -> Tensor:
    x = x.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.float16):
        logits = model(x)
    unscale = lambda g: g  # noqa: E731
    if scaled:
        logits, unscale = loss_scaled_logits(logits)
    loss = F.cross_entropy(logits.float(), y, reduction="none")
    (g,) = torch.autograd.grad(loss.sum(), x)
    return unscale(g)


def test_float16_underflow_is_real_and_scaling_recovers_the_float32_gradient() -> None:
    model, x, y = confident_model()
    assert accuracy(model, x, y) > 0.95
    x_in = x.clone().requires_grad_(True)
    loss = F.cross_entropy(model(x_in), y, reduction="none")
    (g32,) = torch.autograd.grad(loss.sum(), x_in)
    raw = input_gradient(model, x, y, scaled=False)
    scaled = input_gradient(model, x, y, scaled=True)
    flat32, flat_raw, flat_scaled = g32.flatten(1), raw.flatten(1), scaled.flatten(1)
    assert bool((flat32.abs().amax(1) > 0).all())
    # the premise: plain float16 autocast zeroes many examples' gradients
    assert float((flat_raw.abs().amax(1) == 0).float().mean()) > 0.2
    # scaled: every example has a gradient ...
    assert bool((flat_scaled.abs().amax(1) > 0).all())
    # ... pointing where float32's points, of the same size. float32's own cross-entropy gradient
    # is only as precise as 1 - p_y, i.e. about 6e-8 / loss relative (rounding noise below a loss
    # of ~1e-7; still ~5% at 1e-6, which failed this check on an AVX-512 machine), so compare
    # where the float32 reference itself is good to better than 1%.
    well = loss.detach() > 1e-5
    assert int(well.sum()) >= 100
    cosine = F.cosine_similarity(flat_scaled[well], flat32[well], dim=1)
    assert float(cosine.min()) > 0.99
    ratio = flat_scaled[well].norm(dim=1) / flat32[well].norm(dim=1)
    assert float((ratio - 1).abs().max()) < 0.05


def test_float32_and_bfloat16_logits_pass_through_unchanged() -> None:
    for dtype in (torch.float32, torch.bfloat16):
        logits = torch.randn(4, 10, dtype=dtype, requires_grad=True)
        out, unscale = loss_scaled_logits(logits)
        assert out is logits
        g = torch.randn(4, 1, 8, 8)
        assert unscale(g) is g
    half = torch.randn(4, 10, dtype=torch.float16)  # no graph: nothing to scale
    assert loss_scaled_logits(half)[0] is half


@pytest.mark.parametrize(
    "attack",
    [
        PGD(eps=EPS, steps=10, seed=0),
        PGD(eps=EPS, steps=10, seed=0, random_start=False),
        APGD(eps=EPS, steps=20, seed=0),
        APGD(eps=EPS, steps=20, seed=0, loss="dlr"),
        PGD(eps=2.0, norm="l2", steps=10, seed=0),
    ],
    ids=lambda a: f"{a.name}-{a.threat.norm}",
)
def test_attacks_under_float16_autocast_match_float32(attack) -> None:
    model, x, y = confident_model()
    acc32 = accuracy(model, attack(model, x, y), y)
    with torch.autocast("cpu", dtype=torch.float16):
        x16 = attack(model, x, y)
    assert x16.dtype == torch.float32
    assert bool(attack.threat.contains(x16, x).all())
    assert acc32 < 0.3  # a confident, non-robust model: the attack breaks most examples
    assert abs(accuracy(model, x16, y) - acc32) <= 0.03


def test_without_scaling_pgd_under_float16_overstates_robustness(monkeypatch) -> None:
    """The control: the same PGD with the scaling switched off is far weaker under float16."""
    model, x, y = confident_model()
    attack = PGD(eps=EPS, steps=10, seed=0, random_start=False)
    acc32 = accuracy(model, attack(model, x, y), y)
    monkeypatch.setattr(pgd_module, "loss_scaled_logits", lambda z, per_example: (z, lambda g: g))
    with torch.autocast("cpu", dtype=torch.float16):
        weak = accuracy(model, attack(model, x, y), y)
    assert weak > acc32 + 0.2


def test_trades_attack_under_float16_reaches_float32_divergence() -> None:
    model, x, y = confident_model()
    attack = TRADESAttack(eps=EPS, steps=10, seed=0)

    def kl(x_adv: Tensor) -> float:
        with torch.no_grad():
            return float(
                F.kl_div(
                    F.log_softmax(model(x_adv), 1),
                    F.log_softmax(model(x), 1),
                    log_target=True,
                    reduction="batchmean",
                )
            )

    kl32 = kl(attack(model, x, y))
    with torch.autocast("cpu", dtype=torch.float16):
        kl16 = kl(attack(model, x, y))
    assert kl32 > 1.0
    assert kl16 > 0.9 * kl32


def test_batch_coupled_model_uses_one_factor_and_stays_exact() -> None:
    """With BatchNorm on batch statistics (bn_mode="train") examples interact: one factor."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(512, 10),
    ).train()
    x = torch.rand(32, 1, 8, 8)
    y = torch.randint(0, 10, (32,))

    def grad(dtype: torch.dtype | None, per_example: bool) -> Tensor:
        x_in = x.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            logits, unscale = loss_scaled_logits(net(x_in), per_example=per_example)
        loss = F.cross_entropy(logits.float(), y, reduction="none") * 1e-6  # tiny: underflows
        (g,) = torch.autograd.grad(loss.sum(), x_in)
        return unscale(g)

    g32 = grad(None, False)
    g16 = grad(torch.float16, per_example=False)
    assert float(F.cosine_similarity(g16.flatten(), g32.flatten(), dim=0)) > 0.99
    assert float((g16.norm() / g32.norm() - 1).abs()) < 0.05
    # the attack itself, with BatchNorm in train mode, still moves every example
    attack = PGD(eps=EPS, steps=3, seed=0, bn_mode="train", random_start=False)
    with torch.autocast("cpu", dtype=torch.float16):
        x_adv = attack(net, x, y)
    assert bool(((x_adv - x).flatten(1).abs().amax(1) > 0).all())


def test_half_model_with_half_inputs() -> None:
    model, x, y = confident_model()
    half = SmallCNN(input_shape=(1, 8, 8), num_classes=10)
    half.load_state_dict(model.state_dict())
    half = half.half().eval()
    xh = x.half()
    attack = PGD(eps=EPS, steps=10, seed=0, random_start=False)
    x_adv = attack(half, xh, y)
    assert x_adv.dtype == torch.float16
    assert bool(attack.threat.contains(x_adv.float(), xh.float(), atol=1e-3).all())
    assert accuracy(half, x_adv, y) < 0.3


def test_gradient_sanity_check_under_float16_reads_as_float32() -> None:
    """``check_gradients`` scales the cross-entropy gradient as the attacks do: under float16
    autocast it reports the float32 fraction of vanishing gradients, not the ~40% that float16
    underflow alone zeroes (which it would misread as a saturated softmax)."""
    model, x, y = confident_model()
    reading32 = check_gradients(model, x, y)
    with torch.autocast("cpu", dtype=torch.float16):
        reading16 = check_gradients(model, x, y)
    frac32 = reading32.details["fraction_zero_cross_entropy_gradient"]
    frac16 = reading16.details["fraction_zero_cross_entropy_gradient"]
    assert frac32 < 0.05
    assert frac16 <= frac32 + 0.02
    assert not reading16.triggered
    assert "saturated" not in reading16.message
    # the control: the same model's raw float16 gradients do vanish for many examples
    raw = input_gradient(model, x, y, scaled=False)
    assert float((raw.flatten(1).abs().amax(1) == 0).float().mean()) > 0.2
