"""Each training method twice: through its callback on an unmodified module, and written by hand
inside ``training_step``; the Trainer and the clock every run of both uses.

Shared by ``callback`` (time ratios and robust accuracy), ``callback_instructions`` (the same
runs counted in instructions under callgrind) and ``profile_callback`` (a ``torch.profiler``
diff of the two). For PGD-AT (Madry et al. 2018), TRADES (Zhang et al. 2019), MART (Wang et al.
2020), Fast-AT (Wong et al. 2020) and Free-AT (Shafahi et al. 2019), on the embedded digits (or
synthetic 3x32x32 images, :func:`configure`) with the same Trainer settings, seed and number of
gradient steps:

* ``callback``: an ordinary cross-entropy module plus ``AdversarialTraining`` /
  ``FreeAdversarialTraining`` (Fast-AT also once more with ``CatastrophicOverfittingGuard``);
* ``hand``: a subclass whose ``training_step`` runs the attack loop itself (plain PyTorch, the way
  the papers' reference code does; Free-AT with manual optimization and ``m`` inner steps).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor

from advtrain.attacks import FGSM, PGD, TRADESAttack
from advtrain.callbacks import (
    AdversarialTraining,
    CatastrophicOverfittingGuard,
    FreeAdversarialTraining,
)
from advtrain.data import DigitsDataModule, SyntheticDataModule
from advtrain.data.base import ClassificationDataModule
from advtrain.losses import MARTLoss, TRADESLoss
from advtrain.models import SmallCNN

from .timing import Span, step_quantile

EPS = 0.2
PGD_STEPS = 7
TRADES_BETA = 6.0
MART_BETA = 6.0
FREE_REPLAYS = 4
#: Input shape of the model and data; ``--cifar-shape`` switches to (3, 32, 32) synthetic data.
INPUT_SHAPE: tuple[int, int, int] = (1, 8, 8)
#: Lightning accelerator of every run; ``--accelerator gpu`` trains on the first CUDA device.
ACCELERATOR = "cpu"


def configure(
    accelerator: str | None = None, input_shape: tuple[int, int, int] | None = None
) -> None:
    """Sets where every run trains (``"cpu"`` or ``"gpu"``) and the input shape ((1, 8, 8):
    digits; (3, 32, 32): synthetic CIFAR-shaped images)."""
    global ACCELERATOR, INPUT_SHAPE
    if accelerator is not None:
        ACCELERATOR = accelerator
    if input_shape is not None:
        INPUT_SHAPE = input_shape


def datamodule(seed: int = 0) -> ClassificationDataModule:
    """The digits, or synthetic CIFAR-shaped images with ``--cifar-shape``."""
    if INPUT_SHAPE == (1, 8, 8):
        return DigitsDataModule(batch_size=64, seed=seed)
    return SyntheticDataModule(input_shape=INPUT_SHAPE, size=4096, batch_size=64, seed=seed)


class Classifier(pl.LightningModule):
    """The unmodified module: cross-entropy on whatever inputs its step receives."""

    def __init__(self, lr: float = 1e-3, lr_schedule: str = "none") -> None:
        super().__init__()
        self.net = SmallCNN(input_shape=INPUT_SHAPE)
        self.lr = lr
        self.lr_schedule = lr_schedule

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)  # type: ignore[no-any-return]

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self) -> Any:
        opt = torch.optim.Adam(self.parameters(), lr=self.lr)
        if self.lr_schedule == "none":
            return opt
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        peak = max(int(0.4 * total), 1)

        def cyclic(s: int) -> float:  # Wong et al. 2020: up to lr at 2/5, then down to 0
            return s / peak if s < peak else max(0.0, (total - s) / max(total - peak, 1))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, cyclic)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


# -- the same methods, written by hand ------------------------------------------------------------
def _uniform_start(x: Tensor, eps: float) -> Tensor:
    return (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)


class HandPGD(Classifier):
    """Madry et al.: PGD-7, step 2.5·eps/7, uniform random start, model in eval mode."""

    def pgd(self, x: Tensor, y: Tensor) -> Tensor:
        """PGD-7 on the cross-entropy in eval mode; returns the detached adversarial inputs."""
        alpha = 2.5 * EPS / PGD_STEPS
        self.eval()
        x_adv = _uniform_start(x, EPS)
        for _ in range(PGD_STEPS):
            x_adv.requires_grad_(True)
            (grad,) = torch.autograd.grad(F.cross_entropy(self(x_adv), y), x_adv)
            x_adv = torch.min(torch.max(x_adv.detach() + alpha * grad.sign(), x - EPS), x + EPS)
            x_adv = x_adv.clamp(0, 1)
        self.train()
        return x_adv.detach()

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        return F.cross_entropy(self(self.pgd(x, y)), y)


class HandTRADES(Classifier):
    """Zhang et al.: KL inner maximisation from x + 0.001·N(0, I), CE + beta·KL."""

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        alpha = EPS * 0.007 / 0.031
        self.eval()
        with torch.no_grad():
            p_nat = F.softmax(self(x), dim=1)
        x_adv = (x + 0.001 * torch.randn_like(x)).clamp(0, 1)
        for _ in range(PGD_STEPS):
            x_adv.requires_grad_(True)
            kl = F.kl_div(F.log_softmax(self(x_adv), dim=1), p_nat, reduction="sum")
            (grad,) = torch.autograd.grad(kl, x_adv)
            x_adv = torch.min(torch.max(x_adv.detach() + alpha * grad.sign(), x - EPS), x + EPS)
            x_adv = x_adv.clamp(0, 1)
        self.train()
        logits = self(x)
        logits_adv = self(x_adv.detach())
        robust = F.kl_div(
            F.log_softmax(logits_adv, dim=1),
            F.log_softmax(logits, dim=1),
            reduction="batchmean",
            log_target=True,
        )
        return F.cross_entropy(logits, y) + TRADES_BETA * robust


class HandMART(HandPGD):
    """Wang et al.: PGD-7 on the cross-entropy (as HandPGD), then the boosted cross-entropy plus
    beta times the KL weighted by 1 - p_y(x), written as the paper's reference code does."""

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        x_adv = self.pgd(x, y)
        logits = self(x)
        logits_adv = self(x_adv)
        adv_probs = F.softmax(logits_adv, dim=1)
        top2 = torch.argsort(adv_probs, dim=1)[:, -2:]
        new_y = torch.where(top2[:, -1] == y, top2[:, -2], top2[:, -1])
        loss_bce = F.cross_entropy(logits_adv, y) + F.nll_loss(
            torch.log(1.0001 - adv_probs + 1e-12), new_y
        )
        nat_probs = F.softmax(logits, dim=1)
        true_probs = torch.gather(nat_probs, 1, y.unsqueeze(1)).squeeze(1)
        kl = F.kl_div(torch.log(adv_probs + 1e-12), nat_probs, reduction="none").sum(dim=1)
        loss_robust = (kl * (1.0000001 - true_probs)).mean()
        return loss_bce + MART_BETA * loss_robust


class HandFast(Classifier):
    """Wong et al.: FGSM from a uniform random start, step 1.25·eps."""

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        self.eval()
        x_adv = _uniform_start(x, EPS).requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(self(x_adv), y), x_adv)
        x_adv = torch.min(torch.max(x_adv.detach() + 1.25 * EPS * grad.sign(), x - EPS), x + EPS)
        self.train()
        return F.cross_entropy(self(x_adv.clamp(0, 1)), y)


class HandFree(Classifier):
    """Shafahi et al.: m optimizer steps per minibatch, delta carried, manual optimization."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.automatic_optimization = False
        self.delta: Tensor | None = None

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        opt = self.optimizers()
        if self.delta is None:
            self.delta = torch.zeros_like(x)
        n = x.shape[0]
        for _ in range(FREE_REPLAYS):
            x_adv = (x + self.delta[:n]).clamp(0, 1).requires_grad_(True)
            loss = F.cross_entropy(self(x_adv), y)
            opt.zero_grad()  # type: ignore[union-attr]
            self.manual_backward(loss)
            opt.step()  # type: ignore[union-attr]
            assert x_adv.grad is not None
            self.delta[:n] = (self.delta[:n] + EPS * x_adv.grad.sign()).clamp(-EPS, EPS)
        return loss.detach()


# -- the benchmark --------------------------------------------------------------------------------
Variant = tuple[Callable[[], Classifier], Callable[[], list[pl.Callback]]]


def methods(epochs: int) -> dict[str, tuple[int, Variant, Variant]]:
    """name -> (epochs, callback variant, hand variant)."""
    free_epochs = max(1, epochs // FREE_REPLAYS)
    return {
        "pgd_at": (
            epochs,
            (Classifier, lambda: [AdversarialTraining(PGD(eps=EPS, steps=PGD_STEPS))]),
            (HandPGD, list),
        ),
        "trades": (
            epochs,
            (
                Classifier,
                lambda: [
                    AdversarialTraining(
                        loss=TRADESLoss(TRADES_BETA, TRADESAttack(eps=EPS, steps=PGD_STEPS))
                    )
                ],
            ),
            (HandTRADES, list),
        ),
        "mart": (
            epochs,
            (
                Classifier,
                lambda: [
                    AdversarialTraining(
                        loss=MARTLoss(MART_BETA, PGD(eps=EPS, steps=PGD_STEPS, loss="ce"))
                    )
                ],
            ),
            (HandMART, list),
        ),
        "fast_at": (
            epochs,
            (
                lambda: Classifier(lr_schedule="cyclic"),
                lambda: [AdversarialTraining(FGSM(eps=EPS, random_start=True))],
            ),
            (lambda: HandFast(lr_schedule="cyclic"), list),
        ),
        "fast_at+guard": (
            epochs,
            (
                lambda: Classifier(lr_schedule="cyclic"),
                lambda: [
                    AdversarialTraining(FGSM(eps=EPS, random_start=True)),
                    CatastrophicOverfittingGuard(n_examples=256),
                ],
            ),
            (lambda: HandFast(lr_schedule="cyclic"), list),
        ),
        "free_at": (  # the default: the replays inside one Lightning step
            free_epochs,
            (Classifier, lambda: [FreeAdversarialTraining(eps=EPS, replays=FREE_REPLAYS)]),
            (HandFree, list),
        ),
        "free_at_per_step": (  # one Lightning step per replay (for gradient accumulation)
            free_epochs,
            (
                Classifier,
                lambda: [
                    FreeAdversarialTraining(eps=EPS, replays=FREE_REPLAYS, replay_in_step=False)
                ],
            ),
            (HandFree, list),
        ),
    }


class TrainingClock(pl.Callback):
    """Wall and process CPU time from ``on_train_start`` to ``on_train_end`` (synchronised on a
    GPU): the training loop, without building the Trainer or setting up the data; and the
    process CPU time of every training step (``on_train_batch_start`` to
    ``on_train_batch_end``)."""

    def __init__(self) -> None:
        self.span = Span(ACCELERATOR)
        self.steps: list[float] = []
        self._step_start = 0.0

    @property
    def wall(self) -> float:
        return self.span.wall

    @property
    def cpu(self) -> float:
        return self.span.cpu

    def on_train_batch_start(self, *args: Any) -> None:
        self._step_start = time.process_time()

    def on_train_batch_end(self, *args: Any) -> None:
        self.steps.append(time.process_time() - self._step_start)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.span.start()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.span.stop()

    def undisturbed(self) -> float:
        """The run's number of steps times the 10th percentile of their CPU times
        (:func:`timing.step_quantile`): the cost of its steps where nothing disturbed them."""
        return step_quantile(self.steps) * len(self.steps)


def make_trainer(epochs: int, callbacks: list[pl.Callback], **overrides: Any) -> pl.Trainer:
    """The Trainer every run of both variants uses (no logger, checkpoints, progress bar or
    validation: the training loop alone), on :data:`ACCELERATOR`."""
    settings: dict[str, Any] = {
        "max_epochs": epochs,
        "accelerator": ACCELERATOR,
        "devices": 1,
        "callbacks": callbacks,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "limit_val_batches": 0,
        "num_sanity_val_steps": 0,
    }
    settings.update(overrides)
    return pl.Trainer(**settings)


def train(
    variant: Variant,
    epochs: int,
    seed: int,
    extra_callbacks: list[pl.Callback] | None = None,
    context: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
    **trainer_overrides: Any,
) -> tuple[Classifier, TrainingClock]:
    """Trains one variant (seeded with ``seed``, its data too) inside ``context()``; returns
    the module and the :class:`TrainingClock` of its training loop. ``extra_callbacks`` run
    after the clock; ``trainer_overrides`` go to :func:`make_trainer`."""
    make_module, make_callbacks = variant
    pl.seed_everything(seed, verbose=False)
    module = make_module()
    dm = datamodule(seed)
    dm.setup("fit")
    clock = TrainingClock()
    callbacks = [*make_callbacks(), clock, *(extra_callbacks or [])]
    trainer = make_trainer(epochs, callbacks, **trainer_overrides)
    with context():
        trainer.fit(module, datamodule=dm)
    return module, clock
