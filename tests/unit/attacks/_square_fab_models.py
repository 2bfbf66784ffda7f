"""Small digits models shared by the Square, FAB, TRADES-attack and sanity-check tests.

Trained once per test session (``functools.lru_cache``) on sklearn's embedded 8x8 digits scaled to
[0, 1]; a few seconds on two CPU cores.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import Tensor, nn

from advtrain.models import SmallCNN

N_TRAIN = 1400


@functools.lru_cache(maxsize=1)
def digits() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(x_train, y_train, x_test, y_test)``: a fixed shuffle, 1400 train / 397 test images."""
    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    return x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:]


class Quantize(nn.Module):
    """``x -> round(x · levels) / levels``: autograd gives it a zero gradient everywhere.

    A classic accidental gradient mask: white-box attacks see no gradient, yet the classifier
    behind it is no more robust than without it.
    """

    def __init__(self, levels: int = 4) -> None:
        super().__init__()
        self.levels = levels

    def forward(self, x: Tensor) -> Tensor:
        return torch.round(x * self.levels) / self.levels


def _train(model: nn.Module, x: Tensor, y: Tensor, epochs: int, seed: int) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), 64):
            idx = perm[i : i + 64]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    for p in model.parameters():
        p.grad = None
    return model


@functools.lru_cache(maxsize=1)
def standard_cnn() -> nn.Module:
    """A naturally trained SmallCNN (about 96% test accuracy, not robust)."""
    torch.manual_seed(0)
    x, y, _, _ = digits()
    return _train(SmallCNN(width=16, hidden=64), x, y, epochs=15, seed=0)


@functools.lru_cache(maxsize=1)
def quantized_cnn() -> nn.Module:
    """:func:`standard_cnn` behind a :class:`Quantize` input layer (zero input gradients).

    It shares the standard model's layers; its clean accuracy stays about 95%.
    """
    return nn.Sequential(Quantize(4), *standard_cnn()).eval()


def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)`` in eval mode."""
    with torch.no_grad():
        return float((model(x).argmax(dim=1) == y).float().mean())


class CountingModel(nn.Module):
    """Wraps a model and counts how many examples (rows) it was asked to classify."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.rows = 0
        self.calls = 0

    def forward(self, x: Tensor) -> Tensor:
        self.rows += x.shape[0]
        self.calls += 1
        return self.model(x)
