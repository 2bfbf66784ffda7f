"""Where a method's time goes through its callback vs written by hand: a torch.profiler diff.

``scripts/bench_callback.py`` says *how much* slower (or not) a method is through its callback
than the same method written inside ``training_step``; this script says *where*. It trains one
method's two variants of that benchmark (same module, data, seed and Trainer settings) under
``torch.profiler`` and prints, per training step, the operators whose call counts or self CPU
time differ most between the two, and the totals (self CPU time of all operators, and on a GPU
the self device time of all kernels). Python time outside operators shows up as the difference
between a step's wall time and its operators' CPU time.

Usage::

    python scripts/profile_callback.py --method fast_at --epochs 2 --threads 1
    python scripts/profile_callback.py --method free_at --accelerator gpu --rows 30
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings
from collections import defaultdict
from typing import Any

import bench_callback as bench
import pytorch_lightning as pl
import torch
from torch.profiler import ProfilerActivity, profile


class StepCounter(pl.Callback):
    """Counts training batches and times the training loop (wall)."""

    def __init__(self) -> None:
        self.steps = 0
        self.wall = 0.0

    def on_train_start(self, *args: Any) -> None:
        bench._sync()
        self.wall = -time.perf_counter()

    def on_train_batch_end(self, *args: Any) -> None:
        self.steps += 1

    def on_train_end(self, *args: Any) -> None:
        bench._sync()
        self.wall += time.perf_counter()


def profiled_run(
    variant: bench.Variant, epochs: int, seed: int
) -> tuple[dict[str, tuple[int, float, float]], int, float]:
    """Trains one variant under the profiler; returns ``{op: (count, self CPU us, self device
    us)}``, the number of steps and the loop's wall seconds."""
    make_module, make_callbacks = variant
    pl.seed_everything(seed, verbose=False)
    module = make_module()
    dm = bench.datamodule(seed)
    dm.setup("fit")
    counter = StepCounter()
    trainer = bench.make_trainer(epochs, [*make_callbacks(), counter])
    activities = [ProfilerActivity.CPU]
    if bench.ACCELERATOR == "gpu":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        trainer.fit(module, datamodule=dm)
    table: dict[str, tuple[int, float, float]] = {}
    for event in prof.key_averages():
        device_us = float(getattr(event, "self_device_time_total", 0.0) or 0.0)
        table[event.key] = (event.count, float(event.self_cpu_time_total), device_us)
    return table, counter.steps, counter.wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", default="fast_at", help="a method of bench_callback.py")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    parser.add_argument("--accelerator", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--rows", type=int, default=25, help="operators to list")
    args = parser.parse_args()
    bench.ACCELERATOR = args.accelerator
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)

    table = bench.methods(args.epochs)
    epochs, cb_variant, hand_variant = table[args.method]
    bench.train(hand_variant, 1, 0)  # warm-up (imports, allocator, kernels)
    results = {}
    for kind, variant in (("callback", cb_variant), ("hand", hand_variant)):
        results[kind] = profiled_run(variant, epochs, seed=0)

    per_step: dict[str, dict[str, tuple[float, float, float]]] = defaultdict(dict)
    for kind, (ops, steps, _) in results.items():
        for name, (count, cpu_us, dev_us) in ops.items():
            per_step[name][kind] = (count / steps, cpu_us / steps, dev_us / steps)
    zero = (0.0, 0.0, 0.0)

    def diff(name: str) -> float:
        cb, hand = per_step[name].get("callback", zero), per_step[name].get("hand", zero)
        return abs(cb[1] - hand[1]) + abs(cb[2] - hand[2])

    where = args.accelerator if args.accelerator == "cpu" else torch.cuda.get_device_name()
    print(f"## {args.method}: per training step, callback vs hand ({where}, {epochs} epochs)\n")
    for kind, (ops, steps, wall) in results.items():
        cpu_total = sum(v[1] for v in ops.values()) / steps
        dev_total = sum(v[2] for v in ops.values()) / steps
        print(
            f"{kind:8s}: {steps} steps, {1e6 * wall / steps:8.1f} us wall per step (profiled), "
            f"operators' self CPU {cpu_total:8.1f} us, self device {dev_total:8.1f} us"
        )
    print(
        "\n| operator | calls cb | calls hand | self CPU us cb | hand | self device us cb | hand |"
        "\n|---|---|---|---|---|---|---|"
    )
    for name in sorted(per_step, key=diff, reverse=True)[: args.rows]:
        cb, hand = per_step[name].get("callback", zero), per_step[name].get("hand", zero)
        print(
            f"| {name[:60]} | {cb[0]:.1f} | {hand[0]:.1f} | {cb[1]:.1f} | {hand[1]:.1f} "
            f"| {cb[2]:.1f} | {hand[2]:.1f} |"
        )

    print("\nOperators whose calls per step differ (callback - hand), the deterministic part:\n")
    print("| operator | calls cb | calls hand | self CPU us cb | hand |\n|---|---|---|---|---|")
    counted = [
        name
        for name in per_step
        if abs(per_step[name].get("callback", zero)[0] - per_step[name].get("hand", zero)[0]) >= 0.5
    ]

    def count_diff(name: str) -> float:
        return per_step[name].get("callback", zero)[0] - per_step[name].get("hand", zero)[0]

    for name in sorted(counted, key=count_diff, reverse=True):
        cb, hand = per_step[name].get("callback", zero), per_step[name].get("hand", zero)
        print(f"| {name[:60]} | {cb[0]:.1f} | {hand[0]:.1f} | {cb[1]:.1f} | {hand[1]:.1f} |")


if __name__ == "__main__":
    main()
