"""Where a method's time goes through its callback vs written by hand: a torch.profiler diff.

``callback`` says *how much* slower (or not) a method is through its callback than the same
method written inside ``training_step``; this script says *where*. It trains one method's two
variants (:mod:`scripts.bench.callback_variants`: same module, data, seed and Trainer settings)
under ``torch.profiler`` and prints, per training step, the operators whose call counts or self
CPU time differ most between the two, and the totals (self CPU time of all operators, and on a
GPU the self device time of all kernels). Python time outside operators shows up as the
difference between a step's wall time and its operators' CPU time.

Usage (from the repository root)::

    python -m scripts.bench.profile_callback --method fast_at --epochs 2 --threads 1
    python -m scripts.bench.profile_callback --method free_at --accelerator gpu --rows 30
"""

from __future__ import annotations

import argparse
import contextlib
from collections import defaultdict
from collections.abc import Iterator

import torch
from torch.profiler import ProfilerActivity, profile

from . import callback_variants as variants
from .timing import markdown_header, markdown_row, print_machine, quiet_lightning, set_threads

#: operator -> (calls, self CPU us, self device us)
OpTable = dict[str, tuple[int, float, float]]


def profiled_run(variant: variants.Variant, epochs: int, seed: int) -> tuple[OpTable, int, float]:
    """Trains one variant under the profiler; returns ``{op: (count, self CPU us, self device
    us)}``, the number of steps and the loop's wall seconds."""
    activities = [ProfilerActivity.CPU]
    if variants.ACCELERATOR == "gpu":
        activities.append(ProfilerActivity.CUDA)
    profiles: list[profile] = []

    @contextlib.contextmanager
    def profiled() -> Iterator[None]:
        with profile(activities=activities) as prof:
            yield
        profiles.append(prof)

    _, clock = variants.train(variant, epochs, seed, context=profiled)
    table: OpTable = {}
    for event in profiles[0].key_averages():
        device_us = float(getattr(event, "self_device_time_total", 0.0) or 0.0)
        table[event.key] = (event.count, float(event.self_cpu_time_total), device_us)
    return table, len(clock.steps), clock.wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", default="fast_at", help="a method of callback_variants")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    parser.add_argument("--accelerator", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--rows", type=int, default=25, help="operators to list")
    args = parser.parse_args()
    variants.configure(args.accelerator)
    set_threads(args.threads)
    quiet_lightning()
    print_machine(args.accelerator)

    table = variants.methods(args.epochs)
    epochs, cb_variant, hand_variant = table[args.method]
    variants.train(hand_variant, 1, 0)  # warm-up (imports, allocator, kernels)
    results = {}
    for kind, variant in (("callback", cb_variant), ("hand", hand_variant)):
        results[kind] = profiled_run(variant, epochs, seed=0)

    per_step: dict[str, dict[str, tuple[float, float, float]]] = defaultdict(dict)
    for kind, (ops, steps, _) in results.items():
        for name, (count, cpu_us, dev_us) in ops.items():
            per_step[name][kind] = (count / steps, cpu_us / steps, dev_us / steps)
    zero = (0.0, 0.0, 0.0)

    def both(name: str) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
        return per_step[name].get("callback", zero), per_step[name].get("hand", zero)

    def diff(name: str) -> float:
        cb, hand = both(name)
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
    print()
    columns = ["operator", "calls cb", "calls hand", "self CPU us cb", "hand"]
    print(markdown_header([*columns, "self device us cb", "hand"]))
    for name in sorted(per_step, key=diff, reverse=True)[: args.rows]:
        cb, hand = both(name)
        cells = [f"{v:.1f}" for v in (cb[0], hand[0], cb[1], hand[1], cb[2], hand[2])]
        print(markdown_row([name[:60], *cells]))

    print("\nOperators whose calls per step differ (callback - hand), the deterministic part:\n")
    print(markdown_header(columns))

    def count_diff(name: str) -> float:
        cb, hand = both(name)
        return cb[0] - hand[0]

    counted = [name for name in per_step if abs(count_diff(name)) >= 0.5]
    for name in sorted(counted, key=count_diff, reverse=True):
        cb, hand = both(name)
        cells = [f"{v:.1f}" for v in (cb[0], hand[0], cb[1], hand[1])]
        print(markdown_row([name[:60], *cells]))


if __name__ == "__main__":
    main()
