"""Shared pieces of the callback integration tests (no tests here): small unmodified modules,
a dict-batch data module, a shrunken Trainer and a cached pair of trained models.

Everything runs on scikit-learn's embedded digits with tiny networks and one torch thread (the
machine is shared; tiny convolutions are no faster with more threads).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from advtrain.attacks import PGD
from advtrain.data import DigitsDataModule
from advtrain.models import SmallCNN

EPS = 0.2


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Runs a test module with one torch thread, restoring the previous setting afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def small_net() -> nn.Module:
    return SmallCNN(width=8, hidden=32)


class PlainClassifier(pl.LightningModule):
    """An ordinary classifier module knowing nothing about adversarial training.

    Records the inputs of its first ``record`` training steps in :attr:`seen`.
    """

    def __init__(self, lr: float = 3e-3, record: int = 0) -> None:
        super().__init__()
        self.net = small_net()
        self.lr = lr
        self.record = record
        self.seen: list[Tensor] = []

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)  # type: ignore[no-any-return]

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        if len(self.seen) < self.record:
            self.seen.append(x.detach().clone())
        loss = F.cross_entropy(self(x), y)
        self.log("train/loss", loss, on_step=False, on_epoch=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


class DictDataset(Dataset):
    """A map-style data set of ``{"image", "label", "index"}`` dicts over ``(x, y)`` tensors."""

    def __init__(self, x: Tensor, y: Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"image": self.x[i], "label": self.y[i], "index": i}


class DictDigits(DigitsDataModule):
    """Digits whose batches are dicts (the callback must be told ``input_key``/``target_key``)."""

    def train_dataloader(self) -> DataLoader:
        self._ensure_setup()
        x, y = self.train_set.tensors  # type: ignore[union-attr]
        gen = torch.Generator()
        gen.manual_seed(self.seed)
        dataset = DictDataset(x, y)
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=True, generator=gen)

    def val_dataloader(self) -> list[Any]:
        return []


class DictClassifier(PlainClassifier):
    """The same classifier reading ``batch["image"]`` and ``batch["label"]``."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.indices: list[Tensor] = []

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        if len(self.seen) < self.record:
            self.seen.append(batch["image"].detach().clone())
            self.indices.append(batch["index"].clone())
        return F.cross_entropy(self(batch["image"]), batch["label"])


class ManualClassifier(PlainClassifier):
    """Manual optimization: the step calls ``manual_backward`` and ``opt.step()`` itself."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.automatic_optimization = False

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        if len(self.seen) < self.record:
            self.seen.append(x.detach().clone())
        opt = self.optimizers()
        opt.zero_grad()  # type: ignore[union-attr]
        loss = F.cross_entropy(self(x), y)
        self.manual_backward(loss)
        opt.step()  # type: ignore[union-attr]
        return loss.detach()


def trainer(callbacks: Sequence[pl.Callback] = (), package: Any = pl, **kwargs: Any) -> pl.Trainer:
    """A quiet CPU Trainer (of ``package``: ``pytorch_lightning`` by default) without validation,
    checkpoints or logger unless asked for."""
    defaults: dict[str, Any] = {
        "max_epochs": 2,
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "limit_val_batches": 0,
        "num_sanity_val_steps": 0,
    }
    defaults.update(kwargs)
    return package.Trainer(callbacks=list(callbacks), **defaults)


def digits(batch_size: int = 64, **kwargs: Any) -> DigitsDataModule:
    dm = DigitsDataModule(batch_size=batch_size, **kwargs)
    dm.setup("fit")
    return dm


def held_out(n: int = 200) -> tuple[Tensor, Tensor]:
    """The first ``n`` test digits (the same for every test)."""
    return digits().test_tensors(n)


def robust_accuracy(model: nn.Module, eps: float = EPS, n: int = 200, steps: int = 10) -> float:
    """PGD-``steps`` accuracy (random start, seed 0) on the first ``n`` test digits."""
    x, y = held_out(n)
    was_training = model.training
    model.eval()
    x_adv = PGD(eps=eps, steps=steps, seed=0)(model, x, y)
    with torch.no_grad():
        acc = float((model(x_adv).argmax(1) == y).float().mean())
    model.train(was_training)
    return acc


def clean_accuracy(model: nn.Module, n: int = 200) -> float:
    x, y = held_out(n)
    with torch.no_grad():
        return float((model.eval()(x).argmax(1) == y).float().mean())


@functools.cache
def trained(kind: str, epochs: int = 3) -> tuple[pl.LightningModule, float, float]:
    """A :class:`PlainClassifier` trained ``epochs`` on digits, once per session.

    ``kind``: ``"standard"`` (no callback) or ``"pgd_at"`` (``AdversarialTraining(PGD-3)``).
    Returns ``(module, clean accuracy, PGD-10 accuracy)``.
    """
    from advtrain.callbacks import AdversarialTraining

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pl.seed_everything(0, verbose=False)
        module = PlainClassifier()
        callbacks = [AdversarialTraining(PGD(eps=EPS, steps=3), seed=0)] if kind == "pgd_at" else []
        trainer(callbacks, max_epochs=epochs).fit(module, datamodule=digits())
        return module, clean_accuracy(module), robust_accuracy(module)
    finally:
        torch.set_num_threads(previous)
