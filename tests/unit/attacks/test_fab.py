"""FAB / FAB-T: the hyperplane-box projection is exact, the attack breaks a standard model,
returns only adversarial points within eps (else the clean input) and is sane on a robust model."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from _square_fab_models import accuracy, digits, standard_cnn
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linprog, minimize
from torch import Tensor, nn

from advtrain.attacks import FAB, PGD
from advtrain.attacks.fab import project_onto_hyperplane_box
from advtrain.threat import ThreatModel


@pytest.fixture(scope="module")
def std_model() -> nn.Module:
    return standard_cnn()


@pytest.fixture(scope="module")
def batch() -> tuple[Tensor, Tensor]:
    _, _, x, y = digits()
    return x[:200], y[:200]


# -- the projection -----------------------------------------------------------------------------
def _reference_linf(p: np.ndarray, w: np.ndarray, c: float) -> float | None:
    """min ||d||_inf s.t. w·d = c, 0 <= p + d <= 1, as a linear program; None if infeasible."""
    n = p.size
    cost = np.r_[np.zeros(n), 1.0]
    a_ub = np.r_[np.c_[np.eye(n), -np.ones(n)], np.c_[-np.eye(n), -np.ones(n)]]
    res = linprog(
        cost,
        A_ub=a_ub,
        b_ub=np.zeros(2 * n),
        A_eq=np.r_[w, 0.0][None],
        b_eq=[c],
        bounds=[*zip(-p, 1 - p, strict=True), (0, None)],
    )
    return float(res.x[-1]) if res.status == 0 else None


def _reference_l2(p: np.ndarray, w: np.ndarray, c: float) -> float | None:
    """min ||d||_2 s.t. w·d = c, 0 <= p + d <= 1 (SLSQP); None if not solved."""
    res = minimize(
        lambda v: v @ v,
        np.zeros(p.size),
        jac=lambda v: 2 * v,
        constraints=[{"type": "eq", "fun": lambda v: w @ v - c, "jac": lambda v: w}],
        bounds=list(zip(-p, 1 - p, strict=True)),
        method="SLSQP",
        options={"ftol": 1e-14, "maxiter": 500},
    )
    if not res.success or abs(w @ res.x - c) > 1e-8:
        return None
    return float(np.linalg.norm(res.x))


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(1, 8),
    c_scale=st.floats(0.01, 3.0),
    zeros=st.integers(0, 3),
)
def test_projection_matches_solvers(seed: int, n: int, c_scale: float, zeros: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    p = torch.rand(1, n, generator=gen, dtype=torch.float64)
    w = torch.randn(1, n, generator=gen, dtype=torch.float64)
    w[0, : min(zeros, n - 1)] = 0.0
    c = (torch.randn(1, generator=gen, dtype=torch.float64) * c_scale).clamp(-3, 3)
    for norm, reference in (("linf", _reference_linf), ("l2", _reference_l2)):
        d = project_onto_hyperplane_box(p, w, c, 0.0, 1.0, norm)
        inside = (p + d).min() >= -1e-12 and (p + d).max() <= 1 + 1e-12
        assert inside
        ref = reference(p[0].numpy(), w[0].numpy(), float(c))
        if ref is None:
            if norm == "linf":
                # Unreachable within the box: the step goes as far towards the plane as it can.
                room = torch.where(w * c.sign() > 0, 1 - p, p)
                assert float((w * d).sum() * c.sign()) == pytest.approx(
                    float((w.abs() * room).sum()), rel=1e-9
                )
            continue
        assert float((w * d).sum()) == pytest.approx(float(c), abs=1e-9)
        got = float(d.abs().max()) if norm == "linf" else float(d.norm())
        assert got == pytest.approx(ref, abs=1e-6)


def test_projection_batched_and_trivial_cases() -> None:
    p = torch.full((3, 4), 0.5)
    w = torch.tensor([[1.0, 0, 0, 0], [1.0, 1.0, 1.0, 1.0], [0.0, 0, 0, 0]])
    c = torch.tensor([0.2, -0.4, 1.0])
    d_inf = project_onto_hyperplane_box(p, w, c, 0.0, 1.0, "linf")
    assert torch.allclose(d_inf[0], torch.tensor([0.2, 0, 0, 0]))
    assert torch.allclose(d_inf[1], torch.full((4,), -0.1))  # spread evenly in Linf
    assert torch.equal(d_inf[2], torch.zeros(4))  # zero normal: no move, no NaN
    d_l2 = project_onto_hyperplane_box(p, w, c, 0.0, 1.0, "l2")
    assert torch.allclose(d_l2[1], torch.full((4,), -0.1))
    assert torch.equal(project_onto_hyperplane_box(p, w, torch.zeros(3), 0.0, 1.0, "l2"), 0 * p)


# -- the attack ---------------------------------------------------------------------------------
def _check_output(model: nn.Module, x_adv: Tensor, x: Tensor, y: Tensor, norm: str, eps: float):
    """Within eps and the box; every changed example is misclassified."""
    assert bool(ThreatModel(norm, eps).contains(x_adv, x).all())
    changed = (x_adv != x).flatten(1).any(dim=1)
    with torch.no_grad():
        wrong = model(x_adv).argmax(dim=1) != y
    assert bool(wrong[changed].all())
    return changed, wrong


@pytest.mark.parametrize(
    ("norm", "eps", "targeted"),
    [("linf", 0.2, True), ("l2", 1.0, True), ("linf", 0.2, False), ("l2", 1.0, False)],
)
def test_breaks_standard_model(
    std_model: nn.Module, batch: tuple[Tensor, Tensor], norm: str, eps: float, targeted: bool
) -> None:
    x, y = batch[0][:100], batch[1][:100]
    assert accuracy(std_model, x, y) > 0.9
    attack = FAB(eps=eps, norm=norm, targeted=targeted, steps=30, n_target_classes=3, seed=0)
    x_adv = attack(std_model, x, y)
    assert accuracy(std_model, x_adv, y) <= 0.03
    _check_output(std_model, x_adv, x, y, norm, eps)


def test_output_within_eps_or_clean(std_model: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
    x, y = batch[0][:100], batch[1][:100]
    x_copy = x.clone()
    eps = 0.08  # about half the examples have no adversarial point this close
    x_adv = FAB(eps=eps, steps=30, n_target_classes=3, seed=0)(std_model, x, y)
    assert torch.equal(x, x_copy)
    changed, wrong = _check_output(std_model, x_adv, x, y, "linf", eps)
    assert 0.1 < float(changed.float().mean()) < 0.9
    # Unchanged examples are returned exactly (clean input), changed ones are adversarial.
    assert torch.equal(x_adv[~changed], x[~changed])
    # FAB is at least about as strong as PGD at this radius.
    pgd_acc = accuracy(std_model, PGD(eps=eps, steps=30, seed=0)(std_model, x, y), y)
    assert 1 - float(wrong.float().mean()) <= pgd_acc + 0.05


def test_sane_on_robust_model(madry_digits: tuple[nn.Module, Tensor, Tensor]) -> None:
    model, x, y = madry_digits
    x, y = x[:100], y[:100]
    eps = 0.2
    clean = accuracy(model, x, y)
    pgd_acc = accuracy(model, PGD(eps=eps, steps=20, seed=0)(model, x, y), y)
    x_adv = FAB(eps=eps, steps=30, n_target_classes=3, seed=0)(model, x, y)
    fab_acc = accuracy(model, x_adv, y)
    _check_output(model, x_adv, x, y, "linf", eps)
    # Not much lower than PGD (that would hint at a bug), and it does find adversarial points.
    assert pgd_acc - 0.1 <= fab_acc < clean - 0.1


def test_misclassified_inputs_returned_unchanged(
    std_model: nn.Module, batch: tuple[Tensor, Tensor]
) -> None:
    x, _ = batch
    x = x[:32]
    with torch.no_grad():
        wrong = (std_model(x).argmax(dim=1) + 1) % 10
    assert torch.equal(FAB(eps=0.2, steps=5)(std_model, x, wrong), x)


def test_restarts_deterministic_under_seed(
    std_model: nn.Module, batch: tuple[Tensor, Tensor]
) -> None:
    x, y = batch[0][:32], batch[1][:32]
    kwargs = {"eps": 0.08, "steps": 8, "restarts": 2, "n_target_classes": 2}
    a = FAB(seed=3, **kwargs)(std_model, x, y)
    b = FAB(seed=3, **kwargs)(std_model, x, y)
    assert torch.equal(a, b)


def test_model_state_untouched(batch: tuple[Tensor, Tensor]) -> None:
    x, y = batch[0][:32], batch[1][:32]
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Dropout(0.3),
        nn.Linear(256, 10),
    )
    model.train()
    model[0].weight.grad = torch.ones_like(model[0].weight)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for targeted in (True, False):
        FAB(eps=0.1, steps=3, targeted=targeted, n_target_classes=2)(model, x, y)
        after = model.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before)
        assert all(m.training for m in model.modules())
        assert torch.equal(model[0].weight.grad, torch.ones_like(model[0].weight))
        assert model[5].weight.grad is None
        assert all(p.requires_grad for p in model.parameters())


def test_too_many_target_classes(std_model: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
    x, y = batch[0][:4], batch[1][:4]
    with pytest.raises(ValueError, match="n_target_classes <= 9"):
        FAB(eps=0.1, n_target_classes=10)(std_model, x, y)
    # Untargeted FAB ignores n_target_classes.
    FAB(eps=0.1, steps=2, targeted=False, n_target_classes=10)(std_model, x, y)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"eps": -1.0}, ValueError),
        ({"norm": "l1"}, ValueError),
        ({"steps": 0}, ValueError),
        ({"restarts": 0}, ValueError),
        ({"n_target_classes": 0}, ValueError),
        ({"alpha_max": 1.5}, ValueError),
        ({"alpha_max": "0.1"}, TypeError),
        ({"eta": 0.5}, ValueError),
        ({"beta": 0.0}, ValueError),
        ({"beta": 1.2}, ValueError),
    ],
)
def test_bad_arguments(kwargs: dict, error: type[Exception]) -> None:
    with pytest.raises(error):
        FAB(**{"eps": 0.1, **kwargs})


def test_bad_inputs(std_model: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
    x, y = batch[0][:8], batch[1][:8]
    attack = FAB(eps=0.1, steps=2)
    with pytest.raises(ValueError, match="outside bounds"):
        attack(std_model, x - 1, y)
    with pytest.raises(TypeError, match="integer class indices"):
        attack(std_model, x, y.float())
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\)"):
        attack(std_model, x, y - 20)
    with pytest.raises(ValueError, match="logits of shape"):
        attack(nn.Flatten(0), x, y)


def test_names() -> None:
    assert FAB(eps=0.1).name == "fab-t"
    assert FAB(eps=0.1, targeted=False).name == "fab"
    assert "n_target_classes=9" in repr(FAB(eps=0.1))


class Detached(nn.Module):
    """Cuts the autograd graph, as a numpy preprocessing step would."""

    def forward(self, x: Tensor) -> Tensor:
        return x.detach()


def test_graph_cutting_model_gives_clean_output(
    std_model: nn.Module, batch: tuple[Tensor, Tensor]
) -> None:
    x, y = batch[0][:16], batch[1][:16]
    model = nn.Sequential(Detached(), std_model)
    x_adv = FAB(eps=0.2, steps=3, n_target_classes=2)(model, x, y)
    # No gradient: FAB cannot move, so nothing changes except already misclassified inputs.
    assert torch.equal(x_adv, x)


def test_float64_inputs(std_model: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
    model = copy.deepcopy(std_model).double()
    x, y = batch[0][:32].double(), batch[1][:32]
    for targeted in (True, False):
        x_adv = FAB(eps=0.2, steps=10, targeted=targeted, n_target_classes=2)(model, x, y)
        assert x_adv.dtype == torch.float64
        assert accuracy(model, x_adv, y) <= 0.1
