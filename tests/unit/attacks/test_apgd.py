"""APGD (Croce & Hein 2020) and l1-APGD (Croce & Hein 2021): schedule, strength, errors, state."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advtrain.attacks import APGD, PGD
from advtrain.attacks.apgd import checkpoints
from advtrain.models import SmallCNN
from advtrain.threat import ThreatModel, project_l1_box

EPS = 0.2


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Tiny 8x8 models run fastest on one thread, above all on a shared machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


@pytest.fixture(scope="module")
def digit_results(madry_digits, digits_attacked):
    """PGD-50, APGD-CE (shared session results) and APGD-T (3 targets, 120 examples)."""
    model, x, y = madry_digits
    out = {k: digits_attacked[k] for k in ("pgd-50", "apgd-ce")}
    with one_thread():
        out["apgd-t"] = APGD(eps=EPS, targeted=True, n_target_classes=3, seed=0)(
            model, x[:120], y[:120]
        )
    return out


# -- the schedule and the L1 geometry ----------------------------------------------------------
def test_checkpoints_follow_the_paper():
    # p = 0, .22, .41, .57, .70, .80, .87, .93, .99 for 100 iterations.
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert checkpoints(1000)[:3] == [220, 410, 570]
    for n in (1, 2, 5, 10, 37):
        marks = checkpoints(n)
        assert marks == sorted(set(marks)) and all(1 <= m <= n for m in marks)


def _l1_box_reference(delta: Tensor, x: Tensor, eps: Tensor) -> Tensor:
    """Float64 bisection on the soft-threshold level: min ||d - delta||, ||d||_1 <= eps, box."""
    d, xf = delta.double(), x.double()
    cap = torch.where(d >= 0, 1 - xf, xf).clamp_min(0)
    a = d.abs()
    rows = []
    for i in range(d.shape[0]):

        def l1(lam: float, i: int = i) -> Tensor:
            return torch.minimum((a[i] - lam).clamp_min(0), cap[i]).sum()

        lo, hi = 0.0, float(a[i].max())
        if l1(0.0) > eps[i]:
            for _ in range(100):
                mid = (lo + hi) / 2
                lo, hi = (mid, hi) if l1(mid) > eps[i] else (lo, mid)
        else:
            hi = 0.0
        rows.append(torch.minimum((a[i] - hi).clamp_min(0), cap[i]) * d[i].sign())
    return torch.stack(rows)


def test_l1_box_projection_is_exact():
    gen = torch.Generator().manual_seed(0)
    for trial in range(40):
        n = int(torch.randint(1, 80, (1,), generator=gen))
        x = torch.rand(6, n, generator=gen)
        if trial % 3 == 0:
            x = (x > 0.5).float()  # many coordinates on the box boundary
        delta = torch.randn(6, n, generator=gen) * 2
        eps = torch.rand(6, generator=gen) * 4
        eps[0] = 0.0
        got = project_l1_box(delta, x, eps, 0.0, 1.0)
        want = _l1_box_reference(delta, x, eps)
        torch.testing.assert_close(got.double(), want, atol=2e-5, rtol=0)
        assert (got.abs().sum(1) <= eps + 1e-4).all()
        assert ((x + got) >= -1e-6).all() and ((x + got) <= 1 + 1e-6).all()
        # No random feasible point is closer to x + delta.
        dist = (got - delta).norm(dim=1)
        for _ in range(5):
            cand = project_l1_box(torch.randn(6, n, generator=gen), x, eps, 0.0, 1.0)
            assert ((cand - delta).norm(dim=1) >= dist - 1e-4).all()


def test_l1_sparse_direction_keeps_the_top_coordinates():
    grad = torch.tensor([[0.1, -3.0, 0.2, 2.0, 0.0, -0.5, 0.3, 0.05, 0.01, 1.0]])
    step = ThreatModel(norm="l1", eps=1.0).ascent_direction(grad, sparsity=0.8)
    assert step.abs().sum().item() == pytest.approx(1.0)
    assert torch.equal(step.ne(0), torch.tensor([[0, 1, 0, 1, 0, 0, 0, 0, 0, 0]]).bool())
    assert torch.equal(step.sign()[0, [1, 3]], torch.tensor([-1.0, 1.0]))


# -- strength on a robust model ----------------------------------------------------------------
def test_apgd_is_stronger_than_pgd50(madry_digits, digit_results):
    model, x, y = madry_digits
    clean = accuracy(model, x, y)
    pgd = accuracy(model, digit_results["pgd-50"], y)
    apgd_ce = accuracy(model, digit_results["apgd-ce"], y)
    assert clean > 0.9
    assert 0.3 < pgd < clean  # a robust model, attacked
    assert apgd_ce <= pgd
    # The targeted attack finds examples PGD-50 misses.
    pgd_120 = accuracy(model, digit_results["pgd-50"][:120], y[:120])
    assert accuracy(model, digit_results["apgd-t"], y[:120]) < pgd_120 - 1 / 120


@pytest.mark.parametrize("name", ["pgd-50", "apgd-ce", "apgd-t"])
def test_outputs_in_ball_and_box(madry_digits, digit_results, name):
    _, x, _ = madry_digits
    x_adv = digit_results[name]
    x = x[: x_adv.shape[0]]
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert (x_adv - x).abs().max() <= EPS + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1


def test_misclassified_examples_are_returned_unchanged(madry_digits, digit_results):
    model, x, y = madry_digits
    with torch.no_grad():
        wrong = model(x).argmax(1) != y
    assert wrong.any()
    assert torch.equal(digit_results["apgd-ce"][wrong], x[wrong])


@pytest.mark.parametrize(("norm", "eps"), [("l2", 1.0), ("l1", 3.0)])
def test_l2_and_l1_at_least_as_strong_as_pgd(madry_digits, norm, eps):
    model, x, y = madry_digits
    x, y = x[:120], y[:120]
    with one_thread():
        pgd = PGD(eps=eps, norm=norm, steps=50, seed=0)(model, x, y)
        apgd = APGD(eps=eps, norm=norm, seed=0)(model, x, y)
        big = apgd
        if norm == "l1":
            big = APGD(eps=eps, norm=norm, seed=0, large_eps=True)(model, x, y)
    threat = ThreatModel(norm=norm, eps=eps)
    assert threat.contains(apgd, x).all() and threat.contains(big, x).all()
    assert accuracy(model, apgd, y) <= accuracy(model, pgd, y)
    assert accuracy(model, big, y) <= accuracy(model, pgd, y)
    assert accuracy(model, pgd, y) < accuracy(model, x, y)


def test_eps_zero_returns_the_input(madry_digits):
    model, x, y = madry_digits
    x_adv = APGD(eps=0.0, seed=0)(model, x, y)
    assert torch.equal(x_adv, x)
    assert accuracy(model, x_adv, y) == accuracy(model, x, y)


def test_large_eps_fools_everything(madry_digits):
    model, x, y = madry_digits
    with one_thread():
        x_adv = APGD(eps=0.5, steps=20, seed=0)(model, x[:100], y[:100])
    assert accuracy(model, x_adv, y[:100]) <= 0.02


def test_seed_makes_it_deterministic(madry_digits):
    model, x, y = madry_digits
    x, y = x[:50], y[:50]
    a = APGD(eps=EPS, steps=10, seed=3)(model, x, y)
    b = APGD(eps=EPS, steps=10, seed=3)(model, x, y)
    c = APGD(eps=EPS, steps=10, seed=4)(model, x, y)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_restarts_and_targets_only_attack_robust_examples():
    """After everything is fooled, further restarts and targets cost no forward pass."""
    torch.manual_seed(0)
    base = nn.Sequential(nn.Flatten(), nn.Linear(16, 5))
    seen = []

    class Counting(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.base = base

        def forward(self, x: Tensor) -> Tensor:
            seen.append(x.shape[0])
            return self.base(x)

    model = Counting()
    x = torch.rand(20, 1, 4, 4)
    with torch.no_grad():
        y = model(x).argmax(1)
    seen.clear()
    APGD(eps=1.0, steps=10, restarts=1, seed=0)(model, x, y)
    one = sum(seen)
    seen.clear()
    APGD(eps=1.0, steps=10, restarts=4, seed=0)(model, x, y)
    assert sum(seen) == one  # eps = 1 covers the whole box: the first run fools everything
    seen.clear()
    APGD(eps=1.0, steps=10, targeted=True, n_target_classes=4, seed=0)(model, x, y)
    assert sum(seen) <= one + x.shape[0]


def test_targets_are_the_most_likely_other_classes():
    """With one target and a linear model, APGD-T moves towards the runner-up class."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 6))
    x = torch.rand(64, 1, 4, 4)
    with torch.no_grad():
        logits = model(x)
    y = logits.argmax(1)
    runner_up = logits.scatter(1, y.unsqueeze(1), float("-inf")).argmax(1)
    x_adv = APGD(eps=0.05, steps=20, targeted=True, n_target_classes=1, seed=0)(model, x, y)
    with torch.no_grad():
        adv = model(x_adv)
    gap_before = logits.gather(1, runner_up.unsqueeze(1)) - logits.gather(1, y.unsqueeze(1))
    gap_after = adv.gather(1, runner_up.unsqueeze(1)) - adv.gather(1, y.unsqueeze(1))
    assert (gap_after > gap_before).all()


def test_names_and_repr():
    assert APGD(eps=0.1).name == "apgd-ce"
    assert APGD(eps=0.1, loss="dlr").name == "apgd-dlr"
    assert APGD(eps=0.1, targeted=True).name == "apgd-t"
    assert APGD(eps=0.1, targeted=True, loss="ce").name == "apgd-t-ce"
    assert "steps=100" in repr(APGD(eps=0.1))


# -- autocast ----------------------------------------------------------------------------------
def test_runs_under_bf16_autocast(madry_digits):
    model, x, y = madry_digits
    x, y = x[:120], y[:120]
    with one_thread():
        ref = APGD(eps=EPS, steps=30, seed=0)(model, x, y)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = APGD(eps=EPS, steps=30, seed=0)(model, x, y)
            low_t = APGD(eps=EPS, steps=10, targeted=True, n_target_classes=2, seed=0)(model, x, y)
    for x_adv in (low, low_t):
        assert x_adv.dtype == torch.float32
        assert (x_adv - x).abs().max() <= EPS + 1e-6
    # The bf16 attack is about as strong as the float32 one.
    assert abs(accuracy(model, low, y) - accuracy(model, ref, y)) <= 0.06
    assert accuracy(model, low, y) < accuracy(model, x, y) - 0.2


# -- errors ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"eps": -0.1}, ValueError, "eps must be >= 0"),
        ({"eps": 0.1, "norm": "l0"}, ValueError, "norm"),
        ({"eps": 0.1, "loss": "hinge"}, ValueError, "loss must be one of"),
        ({"eps": 0.1, "steps": 0}, ValueError, "steps must be >= 1"),
        ({"eps": 0.1, "steps": 2.5}, TypeError, "steps must be an integer"),
        ({"eps": 0.1, "restarts": 0}, ValueError, "restarts"),
        ({"eps": 0.1, "n_target_classes": 0}, ValueError, "n_target_classes"),
        ({"eps": 0.1, "rho": 1.5}, ValueError, "rho"),
        ({"eps": 0.1, "momentum": 0.0}, ValueError, "momentum"),
        ({"eps": 0.1, "large_eps": True}, ValueError, "norm='l1'"),
        ({"eps": 0.1, "bn_mode": "frozen"}, ValueError, "bn_mode"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        APGD(**kwargs)


def test_bad_inputs():
    model = SmallCNN()
    x = torch.rand(4, 1, 8, 8)
    y = torch.tensor([0, 1, 2, 3])
    attack = APGD(eps=0.1, steps=2)
    with pytest.raises(ValueError, match="n_target_classes must be below"):
        APGD(eps=0.1, targeted=True, n_target_classes=10)(model, x, y)
    with pytest.raises(ValueError, match="NaN"):
        attack(model, torch.where(x > 0.5, float("nan"), x), y)
    with pytest.raises(ValueError, match="outside bounds"):
        attack(model, x * 3, y)
    with pytest.raises(TypeError, match="integer class indices"):
        attack(model, x, y.float())
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\)"):
        attack(model, x, y + 7)
    with pytest.raises(ValueError, match="shape"):
        attack(model, x, y[:3])
    with pytest.raises(TypeError, match="floating-point"):
        attack(model, (x * 255).long(), y)
    with pytest.raises(TypeError, match=r"torch\.nn\.Module"):
        attack(lambda t: t, x, y)
    three = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    with pytest.raises(ValueError, match="at least 4 classes"):
        APGD(eps=0.1, targeted=True, n_target_classes=2)(three, x, y % 3)


# -- the model's state -------------------------------------------------------------------------
class BNNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.3)
        self.fc = nn.Linear(4 * 64, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.drop(F.relu(self.bn(self.conv(x)))).flatten(1))


def _snapshot(model: nn.Module) -> dict:
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "req": [p.requires_grad for p in model.parameters()],
        "modes": [m.training for m in model.modules()],
    }


def _assert_same(model: nn.Module, snap: dict) -> None:
    for k, v in model.state_dict().items():
        assert torch.equal(v, snap["state"][k]), k
    for p, g in zip(model.parameters(), snap["grads"], strict=True):
        assert (p.grad is None) == (g is None) and (g is None or torch.equal(p.grad, g))
    assert [p.requires_grad for p in model.parameters()] == snap["req"]
    assert [m.training for m in model.modules()] == snap["modes"]


@pytest.mark.parametrize("bn_mode", ["eval", "train", "train_frozen"])
@pytest.mark.parametrize("kwargs", [{}, {"targeted": True, "n_target_classes": 3}, {"norm": "l1"}])
def test_model_and_inputs_untouched(bn_mode, kwargs):
    torch.manual_seed(0)
    model = BNNet()
    model.train()
    model.fc.weight.grad = torch.ones_like(model.fc.weight)
    model.conv.bias.requires_grad_(False)
    x = torch.rand(8, 1, 8, 8)
    y = torch.arange(8) % 10
    x0, y0 = x.clone(), y.clone()
    snap = _snapshot(model)
    eps = 2.0 if kwargs.get("norm") == "l1" else 0.1
    APGD(eps=eps, steps=5, bn_mode=bn_mode, seed=0, **kwargs)(model, x, y)
    _assert_same(model, snap)
    assert torch.equal(x, x0) and torch.equal(y, y0)
    assert not x.requires_grad


def test_works_under_inference_mode(madry_digits):
    model, x, y = madry_digits
    with torch.inference_mode():
        x_adv = APGD(eps=EPS, steps=5, seed=0)(model, x[:20], y[:20])
    assert (x_adv - x[:20]).abs().max() <= EPS + 1e-6
