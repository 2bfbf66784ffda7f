"""Sanity flags: each fires on the failure it describes (randomised model, softmax outputs, zero
gradients, black-box beating white-box, non-monotone eps curve, eps = 0 ≠ clean) and stays quiet
on a normal model evaluated normally."""

from __future__ import annotations

import json

import pytest
import torch
from _square_fab_models import accuracy, digits, quantized_cnn, standard_cnn
from torch import Tensor, nn

from advtrain.attacks import PGD, SanityFlag, Square, check_model, check_results, run_sanity_checks
from advtrain.attacks.checks import (
    BLACK_BOX_BEATS_WHITE_BOX,
    EPS_ZERO_NOT_CLEAN,
    NON_MONOTONE_EPS_CURVE,
    PROBABILITY_OUTPUTS,
    RANDOMIZED_MODEL,
    ZERO_GRADIENTS,
    check_black_box,
    check_eps_curve,
    check_eps_zero,
    format_flags,
    triggered,
)

EPS = 0.2


@pytest.fixture(scope="module")
def std_model() -> nn.Module:
    return standard_cnn()


@pytest.fixture(scope="module")
def batch() -> tuple[Tensor, Tensor]:
    _, _, x, y = digits()
    return x[:128], y[:128]


def _by_code(flags: list[SanityFlag]) -> dict[str, SanityFlag]:
    return {f.code: f for f in flags}


def _fired(flags: list[SanityFlag]) -> set[str]:
    return {f.code for f in triggered(flags)}


def _evaluate(model: nn.Module, x: Tensor, y: Tensor, eps: float) -> dict[str, float]:
    return {
        "pgd-20": accuracy(model, PGD(eps=eps, steps=20, seed=0)(model, x, y), y),
        "square": accuracy(model, Square(eps=eps, n_queries=300, seed=0)(model, x, y), y),
    }


# -- end to end ---------------------------------------------------------------------------------
def test_no_false_alarms_on_normal_model(
    std_model: nn.Module, batch: tuple[Tensor, Tensor]
) -> None:
    x, y = batch
    clean = accuracy(std_model, x, y)
    per_attack = _evaluate(std_model, x, y, EPS)
    grid = {
        e: accuracy(std_model, PGD(eps=e, steps=20, seed=0)(std_model, x, y), y)
        for e in (0.0, 0.05, 0.1, 0.2)
    }
    flags = run_sanity_checks(std_model, x, y, clean, per_attack, grid)
    assert {f.code for f in flags} == {
        RANDOMIZED_MODEL,
        PROBABILITY_OUTPUTS,
        ZERO_GRADIENTS,
        BLACK_BOX_BEATS_WHITE_BOX,
        NON_MONOTONE_EPS_CURVE,
        EPS_ZERO_NOT_CLEAN,
    }
    assert _fired(flags) == set(), format_flags(flags)
    assert _by_code(flags)[BLACK_BOX_BEATS_WHITE_BOX].details["checked"] is True


def test_no_false_alarm_on_robust_model(madry_digits: tuple[nn.Module, Tensor, Tensor]) -> None:
    model, x, y = madry_digits
    x, y = x[:100], y[:100]
    flags = check_model(model, x, y) + check_results(
        accuracy(model, x, y), _evaluate(model, x, y, EPS)
    )
    assert _fired(flags) == set(), format_flags(flags)


def test_masked_gradients_flagged(batch: tuple[Tensor, Tensor]) -> None:
    model = quantized_cnn()
    x, y = batch
    clean = accuracy(model, x, y)
    per_attack = _evaluate(model, x, y, EPS)
    # PGD sees zero gradients and only gets its random start; Square breaks the model.
    assert per_attack["pgd-20"] > 0.8 and per_attack["square"] < 0.1
    flags = _by_code(run_sanity_checks(model, x, y, clean, per_attack))
    bb = flags[BLACK_BOX_BEATS_WHITE_BOX]
    assert bb.triggered
    assert bb.details["best_white_box"] == "pgd-20" and bb.details["best_black_box"] == "square"
    assert "gradient masking" in bb.message or "masking its gradients" in bb.message
    zg = flags[ZERO_GRADIENTS]
    assert zg.triggered and zg.details["fraction_zero_margin_gradient"] == 1.0
    assert not flags[RANDOMIZED_MODEL].triggered and not flags[PROBABILITY_OUTPUTS].triggered


# -- model checks -------------------------------------------------------------------------------
class NoisyModel(nn.Module):
    """A randomised defence: Gaussian noise on the input in every mode."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: Tensor) -> Tensor:
        return self.inner(x + 0.1 * torch.randn_like(x))


def _dropout_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(64, 64),
        nn.BatchNorm1d(64),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(64, 10),
    )


def test_randomized_model_flag(std_model: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
    x, y = batch
    model = _dropout_model().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = _by_code(check_model(model, x, y, bn_mode="train"))
    rand = flags[RANDOMIZED_MODEL]
    assert rand.triggered and rand.details["fraction_outputs_changed"] > 0.1
    assert "eval" in rand.advice and "Expectation over Transformation" in rand.advice
    # The state is restored: still in train mode, BatchNorm statistics unchanged.
    assert all(m.training for m in model.modules())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # Evaluated in eval mode (the attacks' default) dropout is off: no flag.
    assert not _by_code(check_model(model, x, y))[RANDOMIZED_MODEL].triggered
    # Randomness that eval mode does not switch off is flagged in every mode.
    assert _by_code(check_model(NoisyModel(std_model), x, y))[RANDOMIZED_MODEL].triggered


def test_probability_outputs_flag(std_model: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
    x, y = batch
    probs = _by_code(check_model(nn.Sequential(std_model, nn.Softmax(dim=1)), x, y))
    assert probs[PROBABILITY_OUTPUTS].triggered
    assert "logits" in probs[PROBABILITY_OUTPUTS].advice
    log_probs = _by_code(check_model(nn.Sequential(std_model, nn.LogSoftmax(dim=1)), x, y))
    assert not log_probs[PROBABILITY_OUTPUTS].triggered


class Detached(nn.Module):
    """Blocks gradients entirely (``x.detach()``), e.g. a preprocessing step run in numpy."""

    def forward(self, x: Tensor) -> Tensor:
        return x.detach()


def test_zero_gradient_flag(std_model: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
    x, y = batch
    blocked = _by_code(check_model(nn.Sequential(Detached(), std_model), x, y))[ZERO_GRADIENTS]
    assert blocked.triggered and blocked.details["fraction_zero_margin_gradient"] == 1.0
    assert "Square" in blocked.advice and "BPDA" in blocked.advice
    normal = _by_code(check_model(std_model, x, y))[ZERO_GRADIENTS]
    assert not normal.triggered and normal.details["fraction_zero_margin_gradient"] == 0.0
    # The tolerated fraction is configurable.
    relaxed = check_model(nn.Sequential(Detached(), std_model), x, y, max_zero_grad_fraction=1.0)
    assert not _by_code(relaxed)[ZERO_GRADIENTS].triggered


def test_check_model_leaves_grads_untouched(
    std_model: nn.Module, batch: tuple[Tensor, Tensor]
) -> None:
    x, y = batch
    params = list(std_model.parameters())
    grads = [p.grad for p in params]
    requires = [p.requires_grad for p in params]
    check_model(std_model, x, y)
    assert [p.grad for p in params] == grads
    assert [p.requires_grad for p in params] == requires
    assert not std_model.training


# -- result checks ------------------------------------------------------------------------------
def test_black_box_flag_margin_and_names() -> None:
    accs = {"apgd-ce": 0.50, "apgd-t": 0.46, "fab-t": 0.47, "square": 0.45, "autoattack": 0.40}
    # 1 point below the best white-box attack: within the default margin.
    assert not check_black_box(accs).triggered
    assert check_black_box(accs, margin=0.0).triggered
    accs["square"] = 0.30
    flag = check_black_box(accs)
    assert flag.triggered and flag.details["best_white_box"] == "apgd-t"
    assert flag.details["gap"] == pytest.approx(0.16)
    assert "autoattack" not in flag.details["white_box"]  # aggregates are not white-box attacks
    # Explicit white-box names.
    assert check_black_box(accs, white_box=["apgd-ce"]).details["best_white_box"] == "apgd-ce"
    # Without a black-box result nothing is checked.
    unchecked = check_black_box({"pgd-20": 0.5})
    assert not unchecked.triggered and unchecked.details["checked"] is False


def test_non_monotone_curve_flag() -> None:
    good = {0.0: 0.98, 0.1: 0.7, 0.2: 0.5, 0.3: 0.505}  # a 0.5-point wobble is tolerated
    assert not check_eps_curve(good).triggered
    bad = {0.0: 0.98, 0.1: 0.6, 0.2: 0.3, 0.3: 0.45}
    flag = check_eps_curve(bad)
    assert flag.triggered
    assert flag.details["violations"][0]["eps"] == 0.3
    assert flag.details["violations"][0]["smaller_eps"] == 0.2
    assert "step size" in flag.advice
    # Compared with every smaller eps, not only the neighbour; clean accuracy anchors eps = 0.
    assert check_eps_curve({0.1: 0.5, 0.2: 0.52, 0.3: 0.53}, tol=0.01).triggered
    assert check_eps_curve({0.1: 0.9}, clean_acc=0.8).triggered
    assert not check_eps_curve({0.1: 0.9}).triggered


def test_eps_zero_flag() -> None:
    assert check_eps_zero({0.0: 0.90, 0.1: 0.5}, clean_acc=0.95).triggered
    assert not check_eps_zero({0.0: 0.95, 0.1: 0.5}, clean_acc=0.95).triggered
    missing = check_eps_zero({0.1: 0.5}, clean_acc=0.95)
    assert not missing.triggered and missing.details["checked"] is False
    flags = _by_code(check_results(0.95, {"pgd": 0.5}, {0: 0.9, 0.1: 0.5}))
    assert flags[EPS_ZERO_NOT_CLEAN].triggered
    assert not flags[NON_MONOTONE_EPS_CURVE].triggered


def test_flags_explain_themselves() -> None:
    flags = check_results(0.95, {"pgd": 0.9, "square": 0.1}, {0.0: 0.9, 0.1: 0.2, 0.2: 0.5})
    assert len(triggered(flags)) == 3
    for flag in flags:
        assert flag.message and flag.advice
        json.dumps(flag.to_dict())
        assert str(flag).startswith(f"[WARNING] {flag.code}:")
    assert len(format_flags(flags).splitlines()) == 3


def test_bad_inputs(std_model: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
    x, y = batch
    with pytest.raises(ValueError, match="percentages"):
        check_results(97.5, {"pgd": 0.5})
    with pytest.raises(ValueError, match="percentages"):
        check_results(0.975, {"pgd": 50.0})
    with pytest.raises(TypeError, match="mapping"):
        check_results(0.975, [0.5])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="radii"):
        check_eps_curve({-0.1: 0.5})
    with pytest.raises(ValueError, match="margin"):
        check_black_box({"pgd": 0.5, "square": 0.4}, margin=-1)
    with pytest.raises(TypeError, match=r"nn\.Module"):
        check_model(lambda t: t, x, y)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="bn_mode"):
        check_model(std_model, x, y, bn_mode="test")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="integer class indices"):
        check_model(std_model, x, y.float())
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\)"):
        check_model(std_model, x, y + 10)
    with pytest.raises(ValueError, match="logits of shape"):
        check_model(nn.Flatten(0), x, y)
    with pytest.raises(ValueError, match="nothing to check"):
        run_sanity_checks()
    with pytest.raises(ValueError, match="x and y"):
        run_sanity_checks(std_model)
    with pytest.raises(ValueError, match="clean_acc"):
        run_sanity_checks(per_attack_acc={"pgd": 0.5})
    with pytest.raises(ValueError, match="unknown sanity-check options"):
        run_sanity_checks(clean_acc=0.9, per_attack_acc={"pgd": 0.5}, margn=0.1)
