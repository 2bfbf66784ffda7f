"""Square Attack: finds adversarial examples without gradients, stays in the threat model, spends
queries only on still-robust examples, is reproducible and leaves the model untouched."""

from __future__ import annotations

import itertools

import pytest
import torch
from _square_fab_models import CountingModel, accuracy, digits, quantized_cnn, standard_cnn
from torch import Tensor, nn

from advtrain.attacks import PGD, Square
from advtrain.attacks.square import centred_difference_block, p_schedule
from advtrain.threat import ThreatModel

N = 200


@pytest.fixture(scope="module")
def std_model() -> nn.Module:
    return standard_cnn()


@pytest.fixture(scope="module")
def batch() -> tuple[Tensor, Tensor]:
    _, _, x, y = digits()
    return x[:N], y[:N]


def test_breaks_standard_model_linf_and_stops_early(
    std_model: nn.Module, batch: tuple[Tensor, Tensor]
) -> None:
    x, y = batch
    assert accuracy(std_model, x, y) > 0.9
    counting = CountingModel(std_model)
    n_queries = 300
    x_adv = Square(eps=0.2, n_queries=n_queries, seed=0)(counting, x, y)
    assert accuracy(std_model, x_adv, y) <= 0.05
    assert bool(ThreatModel("linf", 0.2).contains(x_adv, x).all())
    # Without early stopping every example would cost n_queries + 1 forward rows.
    assert counting.rows < 0.2 * N * (n_queries + 1)


def test_breaks_standard_model_l2(std_model: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
    x, y = batch[0][:100], batch[1][:100]
    x_adv = Square(eps=1.0, norm="l2", n_queries=300, seed=0)(std_model, x, y)
    # White-box L2 PGD-20 reaches ~0%; 300 queries of random search get most of the way.
    assert accuracy(std_model, x_adv, y) <= 0.15
    assert bool(ThreatModel("l2", 1.0).contains(x_adv, x).all())


def test_ce_loss_and_restarts(std_model: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
    x, y = batch
    x_adv = Square(eps=0.2, n_queries=100, loss="ce", restarts=2, seed=0)(std_model, x, y)
    assert accuracy(std_model, x_adv, y) <= 0.05
    assert bool(ThreatModel("linf", 0.2).contains(x_adv, x).all())


@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.1), ("l2", 0.5)])
def test_stays_in_ball_and_box_and_keeps_inputs(
    std_model: nn.Module, batch: tuple[Tensor, Tensor], norm: str, eps: float
) -> None:
    x, y = batch[0][:64], batch[1][:64]
    x_copy, y_copy = x.clone(), y.clone()
    x_adv = Square(eps=eps, norm=norm, n_queries=100, seed=1)(std_model, x, y)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and not x_adv.requires_grad
    assert bool(ThreatModel(norm, eps).contains(x_adv, x, atol=1e-6).all())
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    assert torch.equal(x, x_copy) and torch.equal(y, y_copy)
    # Examples the attack could not break are at least moved (the search explores the ball).
    assert float((x_adv - x).abs().amax()) > 0


def test_misclassified_examples_cost_one_query(
    std_model: nn.Module, batch: tuple[Tensor, Tensor]
) -> None:
    x, _ = batch
    with torch.no_grad():
        wrong = (std_model(x).argmax(dim=1) + 1) % 10
    counting = CountingModel(std_model)
    x_adv = Square(eps=0.2, n_queries=50, seed=0)(counting, x, wrong)
    assert counting.rows == N  # one clean query each, nothing else
    assert torch.equal(x_adv, x)


class ConstantModel(nn.Module):
    """Predicts class 3 whatever the input: unbreakable for examples of class 3."""

    def forward(self, x: Tensor) -> Tensor:
        logits = torch.zeros(x.shape[0], 10, device=x.device)
        logits[:, 3] = 1.0
        return logits


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("restarts", [1, 2])
def test_query_budget_is_exact(norm: str, restarts: int) -> None:
    _, _, x, y = digits()
    x, y = x[:40], y[:40]
    n_robust = int((y == 3).sum())
    assert 0 < n_robust < 40
    counting = CountingModel(ConstantModel())
    Square(eps=0.1, norm=norm, n_queries=25, restarts=restarts, seed=0)(counting, x, y)
    # Clean pass for everyone; n_queries per restart for the examples it cannot break.
    assert counting.rows == 40 + restarts * n_robust * 25


def test_deterministic_under_seed(std_model: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
    x, y = batch[0][:32], batch[1][:32]
    for norm, eps in (("linf", 0.1), ("l2", 0.5)):
        a = Square(eps=eps, norm=norm, n_queries=30, seed=7)(std_model, x, y)
        b = Square(eps=eps, norm=norm, n_queries=30, seed=7)(std_model, x, y)
        c = Square(eps=eps, norm=norm, n_queries=30, seed=8)(std_model, x, y)
        assert torch.equal(a, b)
        assert not torch.equal(a, c)


def test_gradient_free_beats_masked_gradients() -> None:
    model = quantized_cnn()
    _, _, x, y = digits()
    x, y = x[:N], y[:N]
    assert accuracy(model, x, y) > 0.9
    pgd_acc = accuracy(model, PGD(eps=0.2, steps=20, seed=0)(model, x, y), y)
    square_acc = accuracy(model, Square(eps=0.2, n_queries=300, seed=0)(model, x, y), y)
    assert pgd_acc > 0.8  # zero gradients: PGD only gets its random start
    assert square_acc < 0.1


class NoGradModel(nn.Module):
    """Fails if it is ever run with autograd recording."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: Tensor) -> Tensor:
        assert not torch.is_grad_enabled(), "Square must only use forward passes under no_grad"
        return self.inner(x)


def test_uses_forward_passes_only(std_model: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
    x, y = batch[0][:32], batch[1][:32]
    for norm in ("linf", "l2"):
        Square(eps=0.1, norm=norm, n_queries=20, seed=0)(NoGradModel(std_model), x, y)


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
    model[5].bias.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for bn_mode in ("eval", "train", "train_frozen"):
        Square(eps=0.1, n_queries=20, seed=0, bn_mode=bn_mode)(model, x, y)
        after = model.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before)
        assert all(m.training for m in model.modules())
        assert torch.equal(model[0].weight.grad, torch.ones_like(model[0].weight))
        assert model[5].bias.grad is None
        assert model[0].weight.requires_grad and not model[5].bias.requires_grad


def test_eps_zero_returns_input(std_model: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
    x, y = batch[0][:16], batch[1][:16]
    counting = CountingModel(std_model)
    assert torch.equal(Square(eps=0.0, n_queries=10)(counting, x, y), x)


def test_p_schedule_halves_at_paper_checkpoints() -> None:
    assert p_schedule(0.8, 0, 10_000) == 0.8
    assert p_schedule(0.8, 10, 10_000) == 0.8
    assert p_schedule(0.8, 11, 10_000) == 0.4
    assert p_schedule(0.8, 51, 10_000) == 0.2
    assert p_schedule(0.8, 9_999, 10_000) == pytest.approx(0.8 / 512)
    # Rescaled to the budget: iteration 2 of 1000 is iteration 20 of 10,000.
    assert p_schedule(0.8, 2, 1_000) == 0.4
    values = [p_schedule(0.8, i, 5000) for i in range(5000)]
    assert all(a >= b for a, b in itertools.pairwise(values))


@pytest.mark.parametrize("s", [1, 3, 5, 8])
def test_centred_difference_block(s: int) -> None:
    block = centred_difference_block(s)
    assert block.shape == (s, s)
    assert float(block.norm()) == pytest.approx(1.0, abs=1e-5)
    assert bool((block[s // 2 :] < 0).all())
    if s > 1:
        assert bool((block[: s // 2] > 0).all())


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"eps": -0.1}, ValueError),
        ({"norm": "l1"}, ValueError),
        ({"n_queries": 0}, ValueError),
        ({"n_queries": 2.5}, TypeError),
        ({"p_init": 0.0}, ValueError),
        ({"p_init": 1.5}, ValueError),
        ({"p_init": "big"}, TypeError),
        ({"restarts": 0}, ValueError),
        ({"loss": "dlr"}, ValueError),
        ({"bn_mode": "frozen"}, ValueError),
    ],
)
def test_bad_arguments(kwargs: dict, error: type[Exception]) -> None:
    with pytest.raises(error):
        Square(**{"eps": 0.1, **kwargs})


def test_bad_inputs(std_model: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
    x, y = batch[0][:8], batch[1][:8]
    attack = Square(eps=0.1, n_queries=5)
    with pytest.raises(ValueError, match="image batches"):
        attack(nn.Sequential(nn.Linear(64, 10)), x.flatten(1), y)
    with pytest.raises(ValueError, match="outside bounds"):
        attack(std_model, x * 3, y)
    with pytest.raises(TypeError, match="integer class indices"):
        attack(std_model, x, y.float())
    with pytest.raises(ValueError, match="shape"):
        attack(std_model, x, y[:4])
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\)"):
        attack(std_model, x, y + 10)
    with pytest.raises(ValueError, match="at least 3x3"):
        Square(eps=0.5, norm="l2", n_queries=5)(
            nn.Sequential(nn.Flatten(), nn.Linear(4, 10)), x[:, :, :2, :2], y
        )
    with pytest.raises(TypeError, match=r"torch\.nn\.Module"):
        attack(lambda t: t, x, y)  # type: ignore[arg-type]


def test_name_and_repr() -> None:
    attack = Square(eps=0.1, n_queries=100)
    assert attack.name == "square"
    assert "n_queries=100" in repr(attack) and "p_init=0.8" in repr(attack)


@pytest.mark.parametrize("channels", [1, 3])
def test_linf_step_always_changes_the_candidate(channels: int) -> None:
    """A query is never spent on an unchanged image: where the drawn signs would leave the
    window as it is, they are flipped by a uniform non-zero pattern, in one round."""
    from advtrain.attacks.square import _Tables

    gen = torch.Generator().manual_seed(0)
    x = torch.rand(64, channels, 6, 6, generator=gen)
    x[:, :, :3] = 0.0  # at the lower bound: x - eps clips to x there
    attack = Square(eps=0.1, seed=0)
    tables = _Tables(x, 0.1, 0.0, 1.0, linf=True)
    x_best = tables.low.clone()  # every window uniform at -eps: half the draws would repeat it
    seen_patterns = set()
    for p in (0.8, 0.3, 0.05):
        for _ in range(20):
            cand = attack._step_linf(x, x_best, p, tables)
            changed = cand.ne(x_best).flatten(1).any(dim=1)
            assert bool(changed.all())
            on_corner = (cand == tables.low) | (cand == tables.high)
            assert bool(on_corner.all())
            window = cand.ne(x_best).any(dim=1)  # (m, h, w): the changed pixels
            for i in range(4):
                seen_patterns.add(
                    tuple(cand[i, :, window[i]].eq(tables.high[i, :, window[i]]).all(1).tolist())
                )
    # Every non-zero sign pattern occurs (3 channels: 7 of them), and only those.
    assert len(seen_patterns) == 2**channels - 1
    assert (False,) * channels not in seen_patterns
