"""Hand-written baselines and data shared by several benchmarks (plain PyTorch, no advtrain code
path beyond the model class), so that two benchmarks that compare against "the same hand loop"
really run the same one."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advtrain.models import SmallCNN


def frozen(model: nn.Module) -> nn.Module:
    """``model`` in eval mode with ``requires_grad=False`` on its parameters (an attack then
    computes input gradients only)."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def hand_passes(model: nn.Module, x: Tensor, y: Tensor, eps: float, passes: int) -> Tensor:
    """``passes`` forward + input-backward passes with a sign step and a clamp: the cheapest
    attack loop (the baseline of APGD-CE in ``attacks`` (b) and ``apgd_instructions``)."""
    x_adv = x.clone()
    for _ in range(passes):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y, reduction="sum")
        (g,) = torch.autograd.grad(loss, x_adv)
        with torch.no_grad():
            x_adv = torch.min(torch.max(x_adv + 0.25 * eps * g.sign(), x - eps), x + eps)
            x_adv = x_adv.clamp(0, 1)
    return x_adv


def sklearn_digits(seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """scikit-learn's digits in [0, 1] as 1×8×8 images: 1,437 training and 360 test images
    (stratified split, ``random_state=seed``)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.as_tensor(bunch.target, dtype=torch.long)
    tr, te = train_test_split(
        torch.arange(len(y)).numpy(), test_size=360, stratify=bunch.target, random_state=seed
    )
    return x[tr], y[tr], x[te], y[te]


#: ``loss_fn(model, xb, yb, eps_now, progress)``: one batch's training loss (the model is in
#: training mode when it is called; ``progress`` is the fraction of the epochs done).
LossFn = Callable[[nn.Module, Tensor, Tensor, float, float], Tensor]


def train_loop(
    x: Tensor, y: Tensor, epochs: int, loss_fn: LossFn, eps: float, seed: int = 0
) -> nn.Module:
    """A SmallCNN for 1×8×8 inputs trained by ``loss_fn``: Adam 1e-3, batch 64, eps ramped
    linearly over the first 30% of the epochs; returns the model in training mode."""
    torch.manual_seed(seed)
    model = SmallCNN(input_shape=(1, 8, 8), num_classes=10)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    ramp = max(1, round(0.3 * epochs))
    for epoch in range(epochs):
        eps_now = eps * min(1.0, (epoch + 1) / ramp)
        perm = torch.randperm(x.shape[0])
        for start in range(0, x.shape[0], 64):
            idx = perm[start : start + 64]
            model.train()
            loss = loss_fn(model, x[idx], y[idx], eps_now, (epoch + 1) / epochs)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model


def train_madry(
    x_tr: Tensor, y_tr: Tensor, eps: float, epochs: int, steps: int = 7, seed: int = 0
) -> nn.Module:
    """Madry et al.'s PGD-AT written out by hand: a SmallCNN for 1×8×8 inputs, PGD-``steps``
    with a uniform random start and step 2.5·eps/steps, eps ramped linearly over the first 30%
    of the epochs, Adam 1e-3, batch 64 (:func:`train_loop`); returns the model in training mode."""

    def pgd_loss(model: nn.Module, xb: Tensor, yb: Tensor, eps_now: float, _: float) -> Tensor:
        alpha = 2.5 * eps_now / steps
        model.eval()
        x_adv = (xb + (torch.rand_like(xb) * 2 - 1) * eps_now).clamp(0, 1)
        for _ in range(steps):
            x_adv.requires_grad_(True)
            (g,) = torch.autograd.grad(F.cross_entropy(model(x_adv), yb), x_adv)
            with torch.no_grad():
                x_adv = x_adv + alpha * g.sign()
                x_adv = torch.min(torch.max(x_adv, xb - eps_now), xb + eps_now).clamp(0, 1)
        model.train()
        return F.cross_entropy(model(x_adv.detach()), yb)

    return train_loop(x_tr, y_tr, epochs, pgd_loss, eps, seed)
