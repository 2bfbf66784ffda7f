"""A project in the layout of lightning-hydra-template (``lightning`` imports).

The data module normalises in its transform and splits with ``random_split`` over a
``ConcatDataset`` of both official splits; the module saves its network (an ``nn.Module``) in its
hyperparameters, as the template does.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning import LightningDataModule, LightningModule
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset, random_split
from torchmetrics import MeanMetric
from torchmetrics.classification.accuracy import Accuracy
from torchvision import transforms

from .digit_images import DIGITS_MEAN, DIGITS_STD, DigitImages


class SimpleDenseNet(nn.Module):
    """A fully connected network on flattened images."""

    def __init__(self, input_size: int = 64, hidden: int = 128, output_size: int = 10) -> None:
        super().__init__()
        self.model = nn.Sequential(
            nn.Linear(input_size, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Linear(hidden, output_size),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch_size = x.shape[0]
        return self.model(x.view(batch_size, -1))


class DigitsLitModule(LightningModule):
    """Classification of digits; the network comes from the config."""

    def __init__(self, net: nn.Module, lr: float = 3e-3, weight_decay: float = 0.0) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)  # pickles `net` into the checkpoint
        self.net = net
        self.criterion = torch.nn.CrossEntropyLoss()
        self.train_acc = Accuracy(task="multiclass", num_classes=10)
        self.val_acc = Accuracy(task="multiclass", num_classes=10)
        self.train_loss = MeanMetric()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def model_step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[Any, Any, Any]:
        x, y = batch
        logits = self.forward(x)
        loss = self.criterion(logits, y)
        preds = torch.argmax(logits, dim=1)
        return loss, preds, y

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> Any:
        loss, preds, targets = self.model_step(batch)
        self.train_loss(loss)
        self.train_acc(preds, targets)
        self.log("train/loss", self.train_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        _, preds, targets = self.model_step(batch)
        self.val_acc(preds, targets)
        self.log("val/acc", self.val_acc, on_step=False, on_epoch=True, prog_bar=True)

    def configure_optimizers(self) -> Any:
        return torch.optim.Adam(
            self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )


class DigitsDataModule(LightningDataModule):
    """Digits with the template's pipeline: ToTensor, Normalize, random_split of both splits."""

    def __init__(
        self,
        train_val_test_split: tuple[int, int, int] = (1257, 180, 360),
        batch_size: int = 64,
        normalize: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)
        steps: list[Any] = [transforms.ToTensor()]
        if normalize:
            steps.append(transforms.Normalize((DIGITS_MEAN,), (DIGITS_STD,)))
        self.transforms = transforms.Compose(steps)
        self.data_train: Dataset | None = None
        self.data_val: Dataset | None = None
        self.data_test: Dataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if not self.data_train and not self.data_val and not self.data_test:
            trainset = DigitImages(train=True, transform=self.transforms)
            testset = DigitImages(train=False, transform=self.transforms)
            dataset = ConcatDataset(datasets=[trainset, testset])
            self.data_train, self.data_val, self.data_test = random_split(
                dataset=dataset,
                lengths=self.hparams.train_val_test_split,
                generator=torch.Generator().manual_seed(42),
            )

    def train_dataloader(self) -> DataLoader[Any]:
        return DataLoader(self.data_train, batch_size=self.hparams.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader[Any]:
        return DataLoader(self.data_val, batch_size=self.hparams.batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader[Any]:
        return DataLoader(self.data_test, batch_size=self.hparams.batch_size, shuffle=False)
