"""IBPLoss and CROWNIBPLoss: values, logs, schedulable attributes, modes and BatchNorm."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advtrain.certify import crown_bounds, interval_bounds
from advtrain.losses import CROWNIBPLoss, IBPLoss
from advtrain.models import SmallCNN


@pytest.fixture(autouse=True)
def _one_thread():
    """These tests use tiny tensors: one thread avoids contention on a shared CI machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model(bn: bool = False) -> nn.Module:
    torch.manual_seed(0)
    if not bn:
        return SmallCNN((1, 6, 6), 4, width=4, hidden=8).eval()
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 36, 8),
        nn.BatchNorm1d(8),
        nn.ReLU(),
        nn.Linear(8, 4),
    )


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.rand(8, 1, 6, 6, generator=gen), torch.arange(8) % 4


def test_ibp_loss_value_and_logs():
    model, (x, y) = _model(), _batch()
    loss_fn = IBPLoss(eps=0.05, kappa=0.3)
    loss, logs = loss_fn(model, x, y)
    lower, _ = interval_bounds(model, x, 0.05, labels=y)
    clean = F.cross_entropy(model(x), y)
    robust = F.cross_entropy(-lower, y)
    torch.testing.assert_close(loss, 0.3 * clean + 0.7 * robust)
    assert set(logs) >= {"loss/clean", "loss/ibp", "acc/clean", "acc/verified", "eps", "kappa"}
    assert all(isinstance(v, torch.Tensor) and not v.requires_grad for v in logs.values())
    torch.testing.assert_close(logs["loss/ibp"], robust.detach())
    verified = (lower.scatter(1, y[:, None], 1.0) > 0).all(dim=1).float().mean()
    torch.testing.assert_close(logs["acc/verified"], verified)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_robust_term_is_cross_entropy_over_zero_and_negated_margins():
    model, (x, y) = _model(), _batch()
    loss_fn = IBPLoss(eps=0.05, kappa=0.0)
    loss, _ = loss_fn(model, x, y)
    lower, _ = interval_bounds(model, x, 0.05, labels=y)
    # CE([0, -m_j (j != y)]) with the true class in front, as in auto_LiRPA's training loop.
    others = torch.stack([torch.cat([lower[i, : y[i]], lower[i, y[i] + 1 :]]) for i in range(8)])
    padded = torch.cat([torch.zeros(8, 1), -others], dim=1)
    torch.testing.assert_close(loss, F.cross_entropy(padded, torch.zeros(8, dtype=torch.long)))


def test_zero_eps_robust_loss_is_the_clean_loss():
    model, (x, y) = _model(), _batch()
    loss, logs = IBPLoss(eps=0.0, kappa=0.5)(model, x, y)
    torch.testing.assert_close(logs["loss/ibp"], logs["loss/clean"])
    torch.testing.assert_close(logs["acc/verified"], logs["acc/clean"])
    torch.testing.assert_close(loss, logs["loss/clean"])


def test_kappa_one_trains_on_the_clean_loss_only():
    model, (x, y) = _model(), _batch()
    loss, logs = IBPLoss(eps=0.1, kappa=1.0)(model, x, y)
    torch.testing.assert_close(loss, F.cross_entropy(model(x), y))
    assert logs["loss/ibp"] > logs["loss/clean"]  # still logged


def test_crown_ibp_loss_mixes_the_bounds():
    model, (x, y) = _model(), _batch()
    ibp, _ = interval_bounds(model, x, 0.05, labels=y)
    cibp, _ = crown_bounds(model, x, 0.05, labels=y, intermediate="ibp")
    clean = F.cross_entropy(model(x), y)
    for beta in (0.0, 0.4, 1.0):
        loss_fn = CROWNIBPLoss(eps=0.05, kappa=0.25, beta=beta)
        loss, logs = loss_fn(model, x, y)
        mixed = beta * cibp + (1 - beta) * ibp
        torch.testing.assert_close(loss, 0.25 * clean + 0.75 * F.cross_entropy(-mixed, y))
        assert logs["beta"].item() == pytest.approx(beta)
        assert "acc/verified_ibp" in logs
        assert ("acc/verified_crown_ibp" in logs) == (beta > 0)


def test_schedulable_attributes_are_validated():
    loss_fn = CROWNIBPLoss(eps=0.0, kappa=1.0, beta=1.0)
    loss_fn.eps, loss_fn.kappa, loss_fn.beta = 0.2, 0.5, 0.0
    assert (loss_fn.eps, loss_fn.kappa, loss_fn.beta) == (0.2, 0.5, 0.0)
    assert loss_fn.test_eps == pytest.approx(0.2 / 1.1)
    with pytest.raises(ValueError, match="eps"):
        loss_fn.eps = -0.1
    with pytest.raises(ValueError, match="kappa"):
        loss_fn.kappa = 1.5
    with pytest.raises(ValueError, match="beta"):
        loss_fn.beta = -1
    with pytest.raises(ValueError, match="norm"):
        IBPLoss(eps=0.1, norm="l1")
    with pytest.raises(ValueError, match="eps_train_factor"):
        IBPLoss(eps=0.1, eps_train_factor=0.5)
    with pytest.raises(ValueError, match="bounds"):
        IBPLoss(eps=0.1, bounds=(1.0, 0.0))
    assert "eps_train_factor=1.1" in repr(IBPLoss(eps=0.1))


def test_inputs_outside_the_box_are_refused():
    model, (x, y) = _model(), _batch()
    with pytest.raises(ValueError, match="bounds"):
        IBPLoss(eps=0.1)(model, x * 3, y)


@pytest.mark.parametrize("loss_cls", [IBPLoss, CROWNIBPLoss])
def test_batchnorm_in_training_mode_uses_the_clean_batch_statistics(loss_cls):
    model = _model(bn=True).train()
    (x, y) = _batch()
    reference = copy.deepcopy(model)
    loss, _ = loss_cls(eps=0.0, kappa=0.5)(model, x, y)
    # eps = 0: the bounds are the logits of the train-mode forward pass (batch statistics).
    torch.testing.assert_close(loss, F.cross_entropy(reference(x), y))
    # Running statistics moved exactly as after one forward pass, and the mode is unchanged.
    for a, b in zip(model.modules(), reference.modules(), strict=True):
        assert a.training == b.training
        if isinstance(a, nn.modules.batchnorm._BatchNorm):
            torch.testing.assert_close(a.running_mean, b.running_mean)
            torch.testing.assert_close(a.running_var, b.running_var)
    loss_fn = loss_cls(eps=0.1, kappa=0.0)
    loss, logs = loss_fn(model, x, y)
    loss.backward()
    assert torch.isfinite(loss) and logs["acc/verified"] <= logs["acc/clean"] + 1e-6


def test_eval_mode_model_is_not_changed():
    model, (x, y) = _model(bn=True).eval(), _batch()
    state = copy.deepcopy(model.state_dict())
    CROWNIBPLoss(eps=0.1, kappa=0.5, beta=0.5)(model, x, y)
    assert not model.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key])
