"""Base classifiers with known smoothed behaviour, and a noise-trained digits model (cached)."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor, nn

from advtrain.losses import GaussianNoiseLoss
from advtrain.models import SmallCNN


class Constant(nn.Module):
    """Always predicts ``cls``: ``pA = 1``, so CERTIFY gives ``σ·Φ⁻¹(alpha^(1/n))`` exactly."""

    def __init__(self, num_classes: int = 3, cls: int = 1) -> None:
        super().__init__()
        self.num_classes, self.cls = num_classes, cls

    def forward(self, x: Tensor) -> Tensor:
        out = torch.zeros(x.shape[0], self.num_classes, dtype=x.dtype, device=x.device)
        out[:, self.cls] = 1.0
        return out


class HalfSpace(nn.Module):
    """``f(x) = 1[w·x + b > 0]`` as two logits.

    Its smoothed classifier predicts ``1[w·x + b > 0]`` with ``pA = Φ(|w·x + b| / (σ‖w‖))`` and has
    the exact L2 robustness radius ``|w·x + b| / ‖w‖`` (Cohen et al. 2019, the linear case).
    """

    def __init__(self, w: Tensor, b: float) -> None:
        super().__init__()
        self.w = nn.Parameter(w.clone().float(), requires_grad=True)
        self.b = float(b)

    def forward(self, x: Tensor) -> Tensor:
        z = x.flatten(1) @ self.w + self.b
        return torch.stack([-z, z], dim=1)

    def signed_distance(self, x: Tensor) -> float:
        """``(w·x + b) / ‖w‖`` for one example."""
        with torch.no_grad():
            return float((x.flatten() @ self.w + self.b) / self.w.norm())

    def point_at(self, distance: float) -> Tensor:
        """An input at signed distance ``distance`` from the decision boundary."""
        with torch.no_grad():
            unit = self.w / self.w.norm()
            base = -self.b * self.w / self.w.norm() ** 2
            return (base + distance * unit).detach().clone()


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Small models run fastest on one thread (and do not fight other jobs for the cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def half_space(dim: int = 16, seed: int = 0) -> HalfSpace:
    g = torch.Generator().manual_seed(seed)
    return HalfSpace(torch.randn(dim, generator=g), b=0.3)


@functools.cache
def digits_split() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """scikit-learn digits in [0, 1]: 1,437 training and 360 test images (stratified, seed 0)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.as_tensor(bunch.target, dtype=torch.long)
    tr, te = train_test_split(
        np.arange(len(y)), test_size=360, stratify=bunch.target, random_state=0
    )
    return x[tr], y[tr], x[te], y[te]


def train_digits(sigma: float, epochs: int, seed: int = 0, width: int = 32) -> SmallCNN:
    """A SmallCNN trained with Adam 1e-3 (batch 64) on ``x + N(0, σ²)`` (σ = 0: plain training)."""
    x, y, _, _ = digits_split()
    torch.manual_seed(seed)
    model = SmallCNN((1, 8, 8), 10, width=width)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = GaussianNoiseLoss(sigma=sigma, seed=seed)
    g = torch.Generator().manual_seed(seed)
    with one_thread():
        _train(model, opt, loss_fn, x, y, g, epochs)
    return model.eval()


def _train(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    loss_fn: GaussianNoiseLoss,
    x: Tensor,
    y: Tensor,
    g: torch.Generator,
    epochs: int,
) -> None:
    for _ in range(epochs):
        perm = torch.randperm(x.shape[0], generator=g)
        for i in range(0, x.shape[0], 64):
            idx = perm[i : i + 64]
            loss, _ = loss_fn(model, x[idx], y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()


@functools.cache
def noise_trained_digits(sigma: float = 0.25, epochs: int = 30) -> SmallCNN:
    """Cached: the same model serves several test modules in one session."""
    return train_digits(sigma, epochs)
