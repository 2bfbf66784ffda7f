"""Overhead and fidelity of the Lightning plugin: each method through its callback on an
unmodified module vs the same method written by hand inside ``training_step``.

For PGD-AT (Madry et al. 2018), TRADES (Zhang et al. 2019), MART (Wang et al. 2020), Fast-AT
(Wong et al. 2020) and Free-AT (Shafahi et al. 2019) this trains, on the embedded digits with the
same Trainer settings, seed and number of gradient steps:

* ``callback``: an ordinary cross-entropy module plus ``AdversarialTraining`` /
  ``FreeAdversarialTraining`` (Fast-AT also once more with ``CatastrophicOverfittingGuard``);
* ``hand``: a subclass whose ``training_step`` runs the attack loop itself (plain PyTorch, the way
  the papers' reference code does; Free-AT with manual optimization and ``m`` inner steps).

Runs are interleaved (the order of the two variants alternates) and repeated with seeds
``0..repeats-1``. Each run is timed from ``on_train_start`` to ``on_train_end`` (the training
loop itself; building the Trainer and setting up the data, the same code for both variants,
would only dilute the ratio). The script prints the median per-pair ratio callback / hand of
process CPU time (steadier than wall time on a busy machine; target <= 1.05) with a
distribution-free 95% confidence interval for that median (order statistics of the pairs), the
same for wall time, and the robust accuracy of every variant under PGD-50 with 5 restarts on the
360 test digits (mean ± sd over the repeats; the foundation issue asks for the callback's PGD-AT
to be within 3 points of the hand-written one). The verdict is "ok" when the whole interval is at
or under 1.05, "at the mark" when only the median is, "over" otherwise ("few pairs" below 6
pairs, where no 95% interval exists). Many short runs (``--epochs 4 --repeats 40``) pin the
median down better than a few long ones.

A second estimate is steadier on a shared machine: the ratio of the two runs' numbers of steps
times the 10th percentile of their per-step CPU times (``step p10``), i.e. of their steps' cost
where nothing else disturbed them. Interference
only adds time, in bursts that slow some steps and not others, so a low quantile of the steps
tracks the work a step does (``timeit`` takes the minimum for the same reason). It leaves out the
work between steps (epoch ends: the guard's check), which the whole-loop ratio keeps.

Usage::

    python scripts/bench_callback.py                     # 15 epochs, 3 repeats
    python scripts/bench_callback.py --epochs 6 --repeats 2 --threads 1
    python scripts/bench_callback.py --epochs 4 --repeats 40 --threads 1 --skip-accuracy \
        --methods free_at                                     # a tight interval for one method
    python scripts/bench_callback.py --cifar-shape --epochs 4   # timing on 3x32x32 inputs

``--accelerator gpu`` trains both variants on the first CUDA device (the clocks wait for queued
GPU work at the start and end of the loop); the verdict is then on wall time, since the host's
CPU time is not what GPU work costs.

``--cifar-shape`` trains on synthetic 3x32x32 images (``SyntheticDataModule``, 4,096 examples)
instead of the 8x8 digits, where an attack pass costs more next to Lightning's fixed per-step
work; only its times mean anything (accuracy on synthetic data says nothing about real data).
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from scipy import stats as scipy_stats
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

EPS = 0.2
PGD_STEPS = 7
TRADES_BETA = 6.0
MART_BETA = 6.0
FREE_REPLAYS = 4
#: Input shape of the model and data; ``--cifar-shape`` switches to (3, 32, 32) synthetic data.
INPUT_SHAPE: tuple[int, int, int] = (1, 8, 8)
#: Lightning accelerator of every run; ``--accelerator gpu`` trains on the first CUDA device.
ACCELERATOR = "cpu"


def _sync() -> None:
    """Waits for queued CUDA work, so a clock read after it counts that work."""
    if ACCELERATOR == "gpu":
        torch.cuda.synchronize()


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
    """Wall and process CPU time from ``on_train_start`` to ``on_train_end``: the training loop,
    without building the Trainer or setting up the data; and the process CPU time of every
    training step (``on_train_batch_start`` to ``on_train_batch_end``)."""

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0
        self.steps: list[float] = []
        self._step_start = 0.0

    def on_train_batch_start(self, *args: Any) -> None:
        self._step_start = time.process_time()

    def on_train_batch_end(self, *args: Any) -> None:
        self.steps.append(time.process_time() - self._step_start)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        _sync()
        self.wall, self.cpu = -time.perf_counter(), -time.process_time()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        _sync()
        self.wall += time.perf_counter()
        self.cpu += time.process_time()


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


def train(variant: Variant, epochs: int, seed: int) -> tuple[Classifier, float, float, float]:
    """Trains one variant; returns the module, the wall and process CPU time of its training
    loop, and its number of steps times the 10th percentile of their CPU times
    (:class:`TrainingClock`)."""
    make_module, make_callbacks = variant
    pl.seed_everything(seed, verbose=False)
    module = make_module()
    dm = datamodule(seed)
    dm.setup("fit")
    clock = TrainingClock()
    make_trainer(epochs, [*make_callbacks(), clock]).fit(module, datamodule=dm)
    # the undisturbed cost of all the run's steps (Free-AT's step-per-replay mode takes m
    # Lightning steps for the hand loop's one)
    return module, clock.wall, clock.cpu, step_quantile(clock.steps) * len(clock.steps)


def step_quantile(steps: list[float], q: float = 0.1) -> float:
    """The ``q``-quantile of the steps' CPU times: the cost of a step the machine did not
    disturb. Interference from other work on a shared machine only adds time, in bursts that
    slow some steps of a run and not others (the reasoning behind ``timeit``'s minimum); a low
    quantile rather than the minimum keeps one lucky step from deciding. Times the number of
    steps, it estimates a run's steps undisturbed."""
    if not steps:
        return float("nan")
    ordered = sorted(steps)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def median_interval(values: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """The median of ``values`` and a distribution-free confidence interval for it.

    The interval is ``[v_(k), v_(n-k+1)]`` of the sorted values, with ``k`` the largest rank such
    that ``P(Binomial(n, 1/2) < k) <= (1 - level) / 2``; its coverage is at least ``level``
    whatever the distribution (Conover, "Practical Nonparametric Statistics", 3rd ed., §3.2).
    With fewer than 6 values no such ``k`` exists and the interval is the full range.
    """
    ordered = sorted(values)
    n = len(ordered)
    # the smallest k with P(B <= k) >= alpha / 2, so that P(B <= k - 1) < alpha / 2
    k = int(scipy_stats.binom.ppf((1 - level) / 2, n, 0.5))
    if k < 1:
        return statistics.median(ordered), ordered[0], ordered[-1]
    return statistics.median(ordered), ordered[k - 1], ordered[n - k]


def robust_accuracy(module: Classifier, x: Tensor, y: Tensor) -> float:
    module.eval()
    x, y = x.to(module.device), y.to(module.device)
    x_adv = PGD(eps=EPS, steps=50, restarts=5, seed=0)(module, x, y)
    with torch.no_grad():
        return float((module(x_adv).argmax(1) == y).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=15, help="epochs (Free-AT: divided by m)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats (seeds)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    parser.add_argument("--methods", nargs="*", default=None, help="subset of the methods")
    parser.add_argument(
        "--cifar-shape", action="store_true", help="synthetic 3x32x32 images instead of digits"
    )
    parser.add_argument(
        "--accelerator",
        choices=["cpu", "gpu"],
        default="cpu",
        help="where both variants train (gpu: the verdict is on wall time)",
    )
    parser.add_argument(
        "--skip-accuracy", action="store_true", help="timing only (no PGD-50x5 per trained model)"
    )
    args = parser.parse_args()
    global INPUT_SHAPE, ACCELERATOR
    ACCELERATOR = args.accelerator
    if args.cifar_shape:
        INPUT_SHAPE = (3, 32, 32)
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    import logging

    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)

    dm = datamodule()
    dm.setup("fit")
    x_test, y_test = dm.test_tensors()
    table = methods(args.epochs)
    names = args.methods or list(table)
    ratios: dict[str, list[float]] = {n: [] for n in names}
    robust: dict[str, dict[str, list[float]]] = {n: {"callback": [], "hand": []} for n in names}
    times: dict[str, dict[str, list[float]]] = {n: {"callback": [], "hand": []} for n in names}
    cpu: dict[str, dict[str, list[float]]] = {n: {"callback": [], "hand": []} for n in names}
    cpu_ratios: dict[str, list[float]] = {n: [] for n in names}
    step_ratios: dict[str, list[float]] = {n: [] for n in names}
    train(table["pgd_at"][2], 1, 0)  # warm-up (imports, allocator, thread pools)
    for rep in range(args.repeats):
        for name in names:
            epochs, cb_variant, hand_variant = table[name]
            order = [("callback", cb_variant), ("hand", hand_variant)]
            if rep % 2:
                order.reverse()
            step: dict[str, float] = {}
            for kind, variant in order:
                module, seconds, cpu_seconds, step[kind] = train(variant, epochs, seed=rep)
                times[name][kind].append(seconds)
                cpu[name][kind].append(cpu_seconds)
                if not args.skip_accuracy:
                    robust[name][kind].append(robust_accuracy(module, x_test, y_test))
            ratios[name].append(times[name]["callback"][-1] / times[name]["hand"][-1])
            cpu_ratios[name].append(cpu[name]["callback"][-1] / cpu[name]["hand"][-1])
            step_ratios[name].append(step["callback"] / step["hand"])
            accuracy = (
                f"  robust {robust[name]['callback'][-1]:.3f} / {robust[name]['hand'][-1]:.3f}"
                if not args.skip_accuracy
                else ""
            )
            print(
                f"[rep {rep}] {name:15s} callback {times[name]['callback'][-1]:6.2f}s  hand "
                f"{times[name]['hand'][-1]:6.2f}s  (CPU ratio {cpu_ratios[name][-1]:.3f}, "
                f"step p10 ratio {step_ratios[name][-1]:.3f})"
                f"{accuracy}",
                flush=True,
            )

    data_name = "digits" if INPUT_SHAPE == (1, 8, 8) else "synthetic 3x32x32"
    if ACCELERATOR == "gpu":
        data_name += f", on {torch.cuda.get_device_name()}"

    def stats(values: list[float]) -> str:
        if not values:
            return "-"
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{100 * statistics.mean(values):5.1f} ± {100 * sd:4.1f}"

    def interval(values: list[float]) -> tuple[str, str]:
        median, low, high = median_interval(values)
        if len(values) < 6:  # no 95% interval exists: too few pairs for a verdict
            verdict = "few pairs"
        else:
            verdict = "ok" if high <= 1.05 else "at the mark" if median <= 1.05 else "over"
        return f"{median:.3f} [{low:.3f}, {high:.3f}]", verdict

    print(
        f"\nSmallCNN on {data_name}, eps {EPS}, {args.epochs} epochs "
        f"(Free-AT {table['free_at'][0]} x {FREE_REPLAYS} replays), {args.repeats} repeats, "
        f"torch threads {torch.get_num_threads()}"
    )
    print(
        f"{'method':15s} {'CPU ratio, median [95% CI]':>27s} "
        f"{'verdict' if ACCELERATOR == 'cpu' else 'wall verdict':>11s} "
        f"{'wall ratio [95% CI]':>24s} {'step p10 ratio [95% CI]':>24s} {'verdict':>11s} "
        f"{'callback s':>10s} {'hand s':>7s}   "
        f"{'robust % callback':>17s} {'robust % hand':>14s}"
    )
    for name in names:
        cpu_text, verdict = interval(cpu_ratios[name])
        wall_text, wall_verdict = interval(ratios[name])
        if ACCELERATOR == "gpu":  # the host's CPU time is not the cost of GPU work
            verdict = wall_verdict
        step_text, step_verdict = interval(step_ratios[name])
        t_cb = statistics.median(cpu[name]["callback"])
        t_hand = statistics.median(cpu[name]["hand"])
        print(
            f"{name:15s} {cpu_text:>27s} {verdict:>11s} {wall_text:>24s} {step_text:>24s} "
            f"{step_verdict:>11s} {t_cb:10.2f} "
            f"{t_hand:7.2f}   {stats(robust[name]['callback']):>17s} "
            f"{stats(robust[name]['hand']):>14s}"
        )
    print(
        "\nRatios are callback / hand per interleaved pair, of the training loop's process CPU "
        "time (time.process_time; waiting for a busy machine's cores does not inflate it) and of "
        "its wall time; the interval is a distribution-free 95% confidence interval for the "
        "median (the full range below 6 pairs, with no verdict). Verdict: ok = the whole "
        "interval <= 1.05. Step p10: the ratio of the runs' steps x the 10th percentile of "
        "their per-step CPU times, the cost of undisturbed steps (steadier on a shared machine; it "
        "leaves out the work between steps, e.g. the guard's end-of-epoch check). "
        "Times are medians in CPU seconds. Robust accuracy: PGD-50x5 on the 360 test digits."
    )
    if "pgd_at" in names and not args.skip_accuracy:
        at = robust["pgd_at"]
        gap = 100 * (statistics.mean(at["callback"]) - statistics.mean(at["hand"]))
        verdict = "within 3 points" if abs(gap) <= 3 else "NOT within 3 points"
        print(f"\nPGD-AT robust accuracy, callback - hand: {gap:+.1f} points ({verdict})")


if __name__ == "__main__":
    main()
