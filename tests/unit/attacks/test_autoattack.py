"""AutoAttack: versions, per-attack bookkeeping, ordering against PGD/APGD, errors, state."""

from __future__ import annotations

import importlib.util
import itertools
from collections.abc import Iterator

import pytest
import torch
from torch import Tensor, nn

from advtrain.attacks import APGD, AutoAttack, AutoAttackResult
from advtrain.models import SmallCNN

EPS = 0.2
HAS_FAB_SQUARE = all(
    importlib.util.find_spec(m) is not None
    for m in ("advtrain.attacks.fab", "advtrain.attacks.square")
)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def correct(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    with torch.no_grad():
        return model(x).argmax(1) == y


# -- configuration -----------------------------------------------------------------------------
def test_standard_version_is_the_papers():
    aa = AutoAttack(eps=8 / 255)
    assert aa.attack_names == ("apgd-ce", "apgd-t", "fab-t", "square")
    ce, t, fab, square = aa.attacks
    assert (ce.steps, ce.restarts, ce.loss, ce.targeted) == (100, 1, "ce", False)
    assert (t.steps, t.restarts, t.loss, t.targeted, t.n_target_classes) == (100, 1, "dlr", True, 9)
    assert (fab.targeted, fab.n_target_classes, fab.restarts) == (True, 9, 1)
    assert (square.n_queries, square.p_init, square.restarts) == (5000, 0.8, 1)
    assert all(a.eps == 8 / 255 and a.norm == "linf" for a in aa.attacks)


def test_other_versions():
    plus = AutoAttack(eps=0.5, norm="l2", version="plus", n_queries=100)
    assert plus.attack_names == ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t")
    assert [getattr(a, "restarts", None) for a in plus.attacks] == [5, 5, 5, 5, 1, 1]
    assert plus.attacks[3].n_queries == 100
    fast = AutoAttack(eps=0.1, version="fast")
    assert fast.attack_names == ("apgd-ce", "apgd-t")
    l1 = AutoAttack(eps=10.0, norm="l1")
    assert l1.attack_names == ("apgd-ce", "apgd-t")
    ce, t = l1.attacks
    assert ce.large_eps and t.large_eps and ce.restarts == 5 and t.n_target_classes == 5
    custom = AutoAttack(eps=0.1, version="custom", attacks=["apgd-dlr", APGD(eps=0.1, steps=5)])
    assert custom.attack_names == ("apgd-dlr", "apgd-ce")
    twice = AutoAttack(eps=0.1, version="custom", attacks=["apgd-ce", "apgd-ce"])
    assert twice.attack_names == ("apgd-ce#1", "apgd-ce#2")


def test_eps_setter_reaches_every_attack():
    aa = AutoAttack(eps=0.1, version="fast")
    aa.eps = 0.3
    assert aa.eps == 0.3 and all(a.eps == 0.3 for a in aa.attacks)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"version": "turbo"}, ValueError, "version must be one of"),
        ({"version": "custom"}, ValueError, "needs attacks"),
        ({"version": "custom", "attacks": []}, ValueError, "needs attacks"),
        ({"attacks": ["apgd-ce"]}, ValueError, "only used with version='custom'"),
        ({"version": "custom", "attacks": ["pgd"]}, ValueError, "unknown attack"),
        ({"version": "custom", "attacks": [3]}, TypeError, "names or Attack"),
        ({"eps": -1.0}, ValueError, "eps must be >= 0"),
        ({"norm": "l0"}, ValueError, "norm"),
        ({"n_queries": 0}, ValueError, "n_queries"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    kwargs.setdefault("eps", 0.1)
    with pytest.raises(error, match=match):
        AutoAttack(**kwargs)


def test_bad_inputs():
    model = SmallCNN()
    aa = AutoAttack(eps=0.1, version="custom", attacks=[APGD(eps=0.1, steps=2)])
    x = torch.rand(4, 1, 8, 8)
    y = torch.tensor([0, 1, 2, 3])
    with pytest.raises(ValueError, match="NaN"):
        aa(model, torch.where(x > 0.5, float("nan"), x), y)
    with pytest.raises(ValueError, match="outside bounds"):
        aa(model, x + 1.5, y)
    with pytest.raises(TypeError, match="integer class indices"):
        aa(model, x, y.float())
    with pytest.raises(ValueError, match="labels must lie in"):
        aa(model, x, y - 1)
    with pytest.raises(ValueError, match="Square needs image batches"):
        AutoAttack(eps=0.1)(nn.Sequential(nn.Linear(64, 10)), x.flatten(1), y)


# -- on the Madry digits model -----------------------------------------------------------------
def test_ordering_autoattack_apgd_pgd(madry_digits, digits_attacked):
    """AutoAttack <= APGD-CE <= PGD-50, and strictly below PGD-50 (which overstates)."""
    model, _, y = madry_digits
    pgd = correct(model, digits_attacked["pgd-50"], y).float().mean().item()
    apgd = correct(model, digits_attacked["apgd-ce"], y).float().mean().item()
    aa = correct(model, digits_attacked["aa"], y).float().mean().item()
    result = digits_attacked["aa_result"]
    assert aa == pytest.approx(result.robust_accuracy)
    # The first member of the ensemble is exactly APGD-CE with the same seed.
    assert result.accuracies["apgd-ce"] == pytest.approx(apgd)
    assert aa <= apgd <= pgd
    assert aa <= pgd - 5 / 360


def test_last_result_is_consistent(madry_digits, digits_attacked):
    model, x, y = madry_digits
    result: AutoAttackResult = digits_attacked["aa_result"]
    x_adv = digits_attacked["aa"]
    assert result.n == 360 and result.attacks == ("apgd-ce", "apgd-t")
    assert torch.equal(result.clean_correct, correct(model, x, y))
    assert torch.equal(result.robust, correct(model, x_adv, y) & result.clean_correct)
    before = result.clean_correct
    for name in result.attacks:
        after = result.robust_after[name]
        assert not (after & ~before).any()  # cumulative: never regains an example
        assert torch.equal(result.fooled_by(name), before & ~after)
        before = after
    assert torch.equal(before, result.robust)
    counts = result.counts
    assert counts["clean"] >= counts["apgd-ce"] >= counts["apgd-t"] == counts["robust"]
    assert result.accuracies["robust"] == pytest.approx(counts["robust"] / 360)
    assert set(result.seconds) == {"apgd-ce", "apgd-t"}
    assert (x_adv - x).abs().max() <= EPS + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    halves = AutoAttackResult.concat([result, result])
    assert halves.n == 720 and halves.counts["robust"] == 2 * counts["robust"]


@pytest.mark.skipif(not HAS_FAB_SQUARE, reason="FAB / Square not available yet")
def test_standard_adds_to_the_fast_ensemble(madry_digits):
    """The standard ensemble fools every example its first two members fool, and more or equal."""
    model, x, y = madry_digits
    x, y = x[:24], y[:24]
    first_two = AutoAttack(eps=EPS, version="custom", attacks=["apgd-ce", "apgd-t"], seed=0)
    first_two(model, x, y)
    standard = AutoAttack(eps=EPS, seed=0, n_queries=300)
    x_adv = standard(model, x, y)
    robust = standard.last_result.robust
    assert standard.last_result.attacks == ("apgd-ce", "apgd-t", "fab-t", "square")
    assert not (robust & ~first_two.last_result.robust).any()
    assert torch.equal(robust, correct(model, x_adv, y) & standard.last_result.clean_correct)
    assert (x_adv - x).abs().max() <= EPS + 1e-6


def test_eps_zero_gives_clean_accuracy(madry_digits):
    model, x, y = madry_digits
    aa = AutoAttack(eps=0.0, version="fast")
    x_adv = aa(model, x, y)
    assert torch.equal(x_adv, x)
    assert torch.equal(aa.last_result.robust, correct(model, x, y))
    assert aa.last_result.robust_accuracy == aa.last_result.clean_accuracy


def test_accuracy_is_monotone_in_eps(madry_digits):
    model, x, y = madry_digits
    x, y = x[:120], y[:120]
    accs = []
    for eps in (0.0, 0.05, 0.1, 0.2, 0.3, 0.5):
        aa = AutoAttack(
            eps=eps,
            version="custom",
            attacks=[APGD(eps=eps, steps=25, seed=0), APGD(eps=eps, steps=25, loss="dlr", seed=0)],
        )
        aa(model, x, y)
        accs.append(aa.last_result.robust_accuracy)
    assert all(a >= b for a, b in itertools.pairwise(accs)), accs
    assert accs[0] > 0.9 and accs[-1] <= 0.01  # Linf eps 0.5 on digits: ~0%


def test_l1_autoattack_runs(madry_digits):
    model, x, y = madry_digits
    x, y = x[:40], y[:40]
    aa = AutoAttack(eps=2.0, norm="l1", version="fast", seed=0)
    x_adv = aa(model, x, y)
    assert ((x_adv - x).abs().flatten(1).sum(1) <= 2.0 + 1e-4).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert aa.last_result.robust_accuracy < aa.last_result.clean_accuracy


# -- few classes -------------------------------------------------------------------------------
def test_target_counts_fit_small_label_sets():
    torch.manual_seed(0)
    x = torch.rand(16, 1, 4, 4)
    five = nn.Sequential(nn.Flatten(), nn.Linear(16, 5))
    y = torch.arange(16) % 5
    aa = AutoAttack(eps=0.05, version="custom", attacks=["apgd-ce", "apgd-t"], seed=0)
    aa(five, x, y)  # 9 targets lowered to 4
    assert aa.attacks[1].n_target_classes == 9  # the configured attack is left as it was
    three = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    with pytest.warns(UserWarning, match="at least 4 classes"):
        aa(three, x, y % 3)
    assert aa.last_result.attacks == ("apgd-ce", "apgd-t")


# -- state -------------------------------------------------------------------------------------
def test_model_and_inputs_untouched():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Dropout(0.2),
        nn.Flatten(),
        nn.Linear(4 * 64, 10),
    )
    model.train()
    model[5].weight.grad = torch.full_like(model[5].weight, 0.5)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    x = torch.rand(12, 1, 8, 8)
    y = torch.arange(12) % 10
    x0 = x.clone()
    for bn_mode in ("eval", "train"):
        AutoAttack(eps=0.1, version="fast", bn_mode=bn_mode, seed=0)(model, x, y)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert [m.training for m in model.modules()] == modes
    assert torch.equal(model[5].weight.grad, torch.full_like(model[5].weight, 0.5))
    assert model[1].bias.grad is None and all(p.requires_grad for p in model.parameters())
    assert torch.equal(x, x0)


def test_verbose_prints_per_attack(madry_digits, capsys):
    model, x, y = madry_digits
    aa = AutoAttack(eps=EPS, version="custom", attacks=[APGD(eps=EPS, steps=5)], verbose=True)
    aa(model, x[:20], y[:20])
    assert "after apgd-ce: robust accuracy" in capsys.readouterr().out


def test_state_dict_resumes_every_attacks_random_stream():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 5))
    x = torch.rand(10, 1, 4, 4)
    with torch.no_grad():
        y = model(x).argmax(1)
    aa = AutoAttack(eps=0.05, version="custom", attacks=["apgd-ce", "apgd-dlr"], seed=1)
    aa(model, x, y)  # advance the generators
    state = aa.state_dict()
    first = aa(model, x, y)
    other = AutoAttack(eps=0.3, version="custom", attacks=["apgd-ce", "apgd-dlr"], seed=7)
    other.load_state_dict(state)
    assert other.eps == 0.05 and all(a.eps == 0.05 for a in other.attacks)
    assert torch.equal(other(model, x, y), first)
    aa.reseed(1)
    fresh = AutoAttack(eps=0.05, version="custom", attacks=["apgd-ce", "apgd-dlr"], seed=1)
    assert torch.equal(aa(model, x, y), fresh(model, x, y))
