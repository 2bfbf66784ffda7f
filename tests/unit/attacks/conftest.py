"""Shared fixtures for attack tests: a small Madry PGD-AT SmallCNN on sklearn's digits.

``madry_digits`` returns ``(model, x_test, y_test)``: a SmallCNN adversarially trained with a
hand-written loop (Madry et al., ICLR 2018: PGD-7, step 2.5·eps/7, eps 0.2 ramped linearly over
the first 30% of the epochs; 30 epochs of Adam 1e-3, batch 64) on an 80/20 stratified split of the
1797 8x8 digits, pixels scaled to [0, 1] (360 test examples). The model is in eval mode with
frozen parameters; tests must not modify it (the attacks guarantee they do not).

The training loop is written out here on purpose (plain autograd, no advtrain code), so attack
tests do not depend on the library's own training code.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import Tensor, nn

from advtrain.models import SmallCNN

DIGITS_EPS = 0.2


def digits_split(seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Digits as ``(x_train, y_train, x_test, y_test)``: shape (n, 1, 8, 8), values in [0, 1]."""
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    idx_train, idx_test = train_test_split(
        torch.arange(len(y)).numpy(), test_size=0.2, random_state=seed, stratify=y.numpy()
    )
    return x[idx_train], y[idx_train], x[idx_test], y[idx_test]


def _pgd_train_attack(model: nn.Module, x: Tensor, y: Tensor, eps: float, steps: int) -> Tensor:
    """Hand-written Linf PGD with a uniform random start (Madry et al. 2018)."""
    if eps == 0:
        return x
    alpha = 2.5 * eps / steps
    delta = (torch.rand_like(x) * 2 - 1) * eps
    x_adv = (x + delta).clamp(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y)
        (g,) = torch.autograd.grad(loss, x_adv)
        with torch.no_grad():
            x_adv = torch.minimum(torch.maximum(x_adv + alpha * g.sign(), x - eps), x + eps)
            x_adv = x_adv.clamp(0, 1)
    return x_adv.detach()


def train_madry_digits(
    eps: float = DIGITS_EPS, epochs: int = 30, seed: int = 0
) -> tuple[nn.Module, Tensor, Tensor]:
    """Trains the Madry PGD-AT SmallCNN on digits; returns ``(model, x_test, y_test)``.

    Runs on one thread (restored afterwards): faster for 8x8 inputs on a shared machine, and the
    trained weights do not depend on the number of cores.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(eps, epochs, seed)
    finally:
        torch.set_num_threads(threads)


def _train(eps: float, epochs: int, seed: int) -> tuple[nn.Module, Tensor, Tensor]:
    torch.manual_seed(seed)
    x_tr, y_tr, x_te, y_te = digits_split(seed)
    model = SmallCNN(input_shape=(1, 8, 8), num_classes=10)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    ramp = max(1, round(0.3 * epochs))
    n = x_tr.shape[0]
    for epoch in range(epochs):
        eps_now = eps * min(1.0, (epoch + 1) / ramp)
        perm = torch.randperm(n)
        for start in range(0, n, 64):
            idx = perm[start : start + 64]
            xb, yb = x_tr[idx], y_tr[idx]
            model.eval()
            for p in model.parameters():
                p.requires_grad_(False)
            x_adv = _pgd_train_attack(model, xb, yb, eps_now, steps=7)
            for p in model.parameters():
                p.requires_grad_(True)
            model.train()
            loss = F.cross_entropy(model(x_adv), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
        p.grad = None
    return model, x_te, y_te


@pytest.fixture(scope="session")
def madry_digits() -> tuple[nn.Module, Tensor, Tensor]:
    """A Madry PGD-AT SmallCNN on digits (eps 0.2) with the 360 held-out examples."""
    return train_madry_digits()


@pytest.fixture(scope="session")
def digits_attacked(madry_digits) -> dict:
    """Attacks on the 360 held-out digits at eps 0.2, computed once per session.

    Keys: ``"pgd-50"`` and ``"apgd-ce"`` (adversarial inputs), ``"aa"`` (the inputs returned by
    ``AutoAttack(version="custom", attacks=["apgd-ce", "apgd-t"])``) and ``"aa_result"`` (its
    :class:`~advtrain.attacks.AutoAttackResult`).
    """
    from advtrain.attacks import APGD, PGD, AutoAttack

    model, x, y = madry_digits
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out: dict = {
            "pgd-50": PGD(eps=DIGITS_EPS, steps=50, seed=0)(model, x, y),
            "apgd-ce": APGD(eps=DIGITS_EPS, seed=0)(model, x, y),
        }
        aa = AutoAttack(eps=DIGITS_EPS, version="custom", attacks=["apgd-ce", "apgd-t"], seed=0)
        out["aa"] = aa(model, x, y)
        out["aa_result"] = aa.last_result
    finally:
        torch.set_num_threads(threads)
    return out
