"""Overhead and fidelity of the Lightning plugin: each method through its callback on an
unmodified module vs the same method written by hand inside ``training_step``.

The two variants of every method (PGD-AT, TRADES, MART, Fast-AT with and without the guard,
Free-AT in both modes) are those of :mod:`scripts.bench.callback_variants`: on the embedded
digits with the same Trainer settings, seed and number of gradient steps.

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
where nothing else disturbed them. Interference only adds time, in bursts that slow some steps
and not others, so a low quantile of the steps tracks the work a step does (``timeit`` takes the
minimum for the same reason). It leaves out the work between steps (epoch ends: the guard's
check), which the whole-loop ratio keeps.

Usage (from the repository root)::

    python -m scripts.bench.callback                     # 15 epochs, 3 repeats
    python -m scripts.bench.callback --epochs 6 --repeats 2 --threads 1
    python -m scripts.bench.callback --epochs 4 --repeats 40 --threads 1 --skip-accuracy \
        --methods free_at                                     # a tight interval for one method
    python -m scripts.bench.callback --cifar-shape --epochs 4   # timing on 3x32x32 inputs

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

import torch
from torch import Tensor

from advtrain.attacks import PGD

from . import callback_variants as variants
from .timing import (
    RatioSummary,
    markdown_table,
    print_machine,
    quiet_lightning,
    rotation,
    set_threads,
)

KINDS = ("callback", "hand")
#: per method, per variant: one value per run
Record = dict[str, dict[str, list[float]]]


def robust_accuracy(module: variants.Classifier, x: Tensor, y: Tensor) -> float:
    """Accuracy under PGD-50 with 5 restarts at the training eps."""
    module.eval()
    x, y = x.to(module.device), y.to(module.device)
    x_adv = PGD(eps=variants.EPS, steps=50, restarts=5, seed=0)(module, x, y)
    with torch.no_grad():
        return float((module(x_adv).argmax(1) == y).float().mean())


def mean_sd(values: list[float]) -> str:
    """``mean ± sd`` in percent, or ``-``."""
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):5.1f} ± {100 * sd:4.1f}"


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
    variants.configure(args.accelerator, (3, 32, 32) if args.cifar_shape else (1, 8, 8))
    set_threads(args.threads)
    quiet_lightning()
    print_machine(args.accelerator)

    dm = variants.datamodule()
    dm.setup("fit")
    x_test, y_test = dm.test_tensors()
    table = variants.methods(args.epochs)
    names = args.methods or list(table)
    # per method and variant: wall and CPU seconds of each run, its undisturbed steps, accuracy
    wall: Record = {n: {k: [] for k in KINDS} for n in names}
    cpu: Record = {n: {k: [] for k in KINDS} for n in names}
    steps: Record = {n: {k: [] for k in KINDS} for n in names}
    robust: Record = {n: {k: [] for k in KINDS} for n in names}

    def ratios(record: Record, name: str) -> list[float]:
        return [c / h for c, h in zip(record[name]["callback"], record[name]["hand"], strict=True)]

    variants.train(table["pgd_at"][2], 1, 0)  # warm-up (imports, allocator, thread pools)
    for rep in range(args.repeats):
        for name in names:
            epochs, cb_variant, hand_variant = table[name]
            for kind, variant in rotation([("callback", cb_variant), ("hand", hand_variant)], rep):
                module, clock = variants.train(variant, epochs, seed=rep)
                wall[name][kind].append(clock.wall)
                cpu[name][kind].append(clock.cpu)
                # the undisturbed cost of all the run's steps (Free-AT's step-per-replay mode
                # takes m Lightning steps for the hand loop's one)
                steps[name][kind].append(clock.undisturbed())
                if not args.skip_accuracy:
                    robust[name][kind].append(robust_accuracy(module, x_test, y_test))
            accuracy = (
                f"  robust {robust[name]['callback'][-1]:.3f} / {robust[name]['hand'][-1]:.3f}"
                if not args.skip_accuracy
                else ""
            )
            print(
                f"[rep {rep}] {name:15s} callback {wall[name]['callback'][-1]:6.2f}s  hand "
                f"{wall[name]['hand'][-1]:6.2f}s  (CPU ratio {ratios(cpu, name)[-1]:.3f}, "
                f"step p10 ratio {ratios(steps, name)[-1]:.3f})"
                f"{accuracy}",
                flush=True,
            )

    data_name = "digits" if variants.INPUT_SHAPE == (1, 8, 8) else "synthetic 3x32x32"
    if args.accelerator == "gpu":
        data_name += f", on {torch.cuda.get_device_name()}"
    print(
        f"\nSmallCNN on {data_name}, eps {variants.EPS}, {args.epochs} epochs "
        f"(Free-AT {table['free_at'][0]} x {variants.FREE_REPLAYS} replays), {args.repeats} "
        f"repeats, torch threads {torch.get_num_threads()}\n"
    )
    rows = []
    for name in names:
        cpu_ratio = RatioSummary.of(ratios(cpu, name))
        wall_ratio = RatioSummary.of(ratios(wall, name))
        step_ratio = RatioSummary.of(ratios(steps, name))
        # on a GPU the host's CPU time is not the cost of GPU work: the verdict is on wall time
        judged = wall_ratio if args.accelerator == "gpu" else cpu_ratio
        rows.append(
            [
                name,
                cpu_ratio,
                judged.verdict(),
                wall_ratio,
                step_ratio,
                step_ratio.verdict(),
                f"{statistics.median(cpu[name]['callback']):.2f}",
                f"{statistics.median(cpu[name]['hand']):.2f}",
                mean_sd(robust[name]["callback"]),
                mean_sd(robust[name]["hand"]),
            ]
        )
    headers = [
        "method",
        "CPU ratio, median [95% CI]",
        "verdict" if args.accelerator == "cpu" else "wall verdict",
        "wall ratio [95% CI]",
        "step p10 ratio [95% CI]",
        "verdict",
        "callback s",
        "hand s",
        "robust % callback",
        "robust % hand",
    ]
    print(markdown_table(headers, rows))
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
