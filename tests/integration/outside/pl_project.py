"""A ``pytorch_lightning`` project in the style of Lightning's own examples.

A small CNN classifier, a data module whose datasets carry their transform
(``dataset.transform``, the torchvision way) and a validation split cut with ``random_split``.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, random_split
from torchvision import transforms

from .digit_images import DIGITS_MEAN, DIGITS_STD, DigitImages


class LitClassifier(pl.LightningModule):
    def __init__(self, hidden_dim: int = 32, learning_rate: float = 3e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten()
        )
        self.head = nn.Sequential(
            nn.Linear(16 * 16, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        acc = (self(x).argmax(dim=1) == y).float().mean()
        self.log("valid_acc", acc)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.learning_rate)


class DigitsData(pl.LightningDataModule):
    def __init__(self, batch_size: int = 64) -> None:
        super().__init__()
        self.batch_size = batch_size
        transform = transforms.Compose(
            [transforms.ToTensor(), transforms.Normalize((DIGITS_MEAN,), (DIGITS_STD,))]
        )
        dataset = DigitImages(train=True, transform=transform)
        self.test_set = DigitImages(train=False, transform=transform)
        self.train_set, self.val_set = random_split(
            dataset, [1300, 200], generator=torch.Generator().manual_seed(42)
        )

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, batch_size=self.batch_size)


class LitAutoEncoder(pl.LightningModule):
    """Not a classifier: forward takes flattened images and reconstructs them."""

    def __init__(self, hidden_dim: int = 16) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(64, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, 3))
        self.decoder = nn.Sequential(nn.Linear(3, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, 64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, _ = batch
        x = x.view(x.size(0), -1)
        return F.mse_loss(x, self(x))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-3)
