"""Each method through its callback vs written by hand, counted in instructions.

``callback`` compares the two variants' CPU time, and on a shared machine its ratios move by
several percent between runs: as much as the 1.05 bound being checked (issue #4: each method
through the callback costs <= 1.05x the same method written by hand inside ``training_step``).
This benchmark makes the same comparison in executed instructions, which machine load does not
change (the method of ``apgd_instructions``):

* it re-runs itself under ``valgrind --tool=callgrind`` with one thread (``OMP_NUM_THREADS=1``,
  ``PYTHONHASHSEED=0``; :mod:`scripts.bench.callgrind`);
* the worker trains each method's two variants (:mod:`scripts.bench.callback_variants`: same
  module, data, seed, Trainer settings and number of steps) and calls ``os.getppid()`` at
  ``on_train_start`` and ``on_train_end``; with ``--dump-before=getppid`` callgrind writes one
  profile per phase, so each training loop (the same span ``callback`` times) is counted on its
  own;
* a warm-up run comes first (imports, allocator, oneDNN primitive caches).

Instructions are not time: they leave out cache misses and memory stalls, which both variants
share here (the same model, batch and operators), and they count the Python interpreter's and
Lightning's work exactly, which is what the callback adds. Callgrind runs python + torch about
50-100x slower, hence few epochs. Example (from the repository root)::

    python -m scripts.bench.callback_instructions --epochs 1 --steps 10   # about 30 minutes
    python -m scripts.bench.callback_instructions --epochs 1 --methods fast_at   # 10 minutes
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import pytorch_lightning as pl
import torch

from . import callback_variants as variants
from .callgrind import run_phases
from .timing import markdown_table, print_machine, quiet_lightning

METHODS = ["pgd_at", "trades", "mart", "fast_at", "free_at"]


class PhaseMarker(pl.Callback):
    """Closes a callgrind phase (``os.getppid()``) where the training loop starts and ends."""

    def __init__(self, label: str, phases: list[str]) -> None:
        self.label, self.phases = label, phases

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        os.getppid()
        self.phases.append(f"setup {self.label}")

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        os.getppid()
        self.phases.append(f"train {self.label}")


def run(variant: variants.Variant, epochs: int, marker: PhaseMarker, steps: int | None) -> int:
    """Trains one variant (seed 0, at most ``steps`` batches an epoch); returns its number of
    steps."""
    _, clock = variants.train(
        variant, epochs, 0, extra_callbacks=[marker], limit_train_batches=steps or 1.0
    )
    return len(clock.steps)


def worker(methods: list[str], epochs: int, steps: int | None, phases_file: str) -> None:
    """Runs under callgrind: every ``os.getppid()`` closes the phase before it."""
    torch.set_num_threads(1)
    quiet_lightning()
    phases: list[str] = []
    counts: dict[str, int] = {}
    table = variants.methods(epochs)
    run(table["fast_at"][2], 1, PhaseMarker("warm-up", phases), steps)
    for name in methods:
        method_epochs, cb_variant, hand_variant = table[name]
        for kind, variant in (("callback", cb_variant), ("hand", hand_variant)):
            label = f"{name} {kind}"
            counts[label] = run(variant, method_epochs, PhaseMarker(label, phases), steps)
    Path(phases_file).write_text(json.dumps({"phases": phases, "steps": counts}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=1, help="epochs (Free-AT: divided by m)")
    parser.add_argument(
        "--steps", type=int, default=0, help="batches per epoch (0: the whole epoch, ~20)"
    )
    parser.add_argument("--methods", nargs="*", default=METHODS, choices=METHODS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--phases-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.methods, args.epochs, args.steps or None, args.phases_file)
        return
    print_machine()
    start = time.perf_counter()
    worker_args = ["--epochs", str(args.epochs), "--steps", str(args.steps)]
    counts, record = run_phases(
        __spec__.name, [*worker_args, "--methods", *args.methods], prefix="callback_cg_"
    )
    phases, steps = record["phases"], record["steps"]
    if len(counts) < len(phases):
        raise SystemExit(f"expected {len(phases)} callgrind dumps, found {len(counts)}")
    ir = dict(zip(phases, counts, strict=False))
    free_epochs = max(1, args.epochs // variants.FREE_REPLAYS)
    print(
        f"torch {torch.__version__}, Lightning {pl.__version__}; SmallCNN on digits, eps "
        f"{variants.EPS}, {args.epochs} epochs of {args.steps or 'all'} batches (Free-AT "
        f"{free_epochs} x {variants.FREE_REPLAYS} replays), 1 thread, "
        f"{time.perf_counter() - start:.0f} s under callgrind\n"
    )
    rows = []
    for name in args.methods:
        cb, hand = ir[f"train {name} callback"], ir[f"train {name} hand"]
        n_cb, n_hand = steps[f"{name} callback"], steps[f"{name} hand"]
        ratio = (cb / n_cb) / (hand / n_hand)
        rows.append(
            [
                name,
                n_cb,
                f"{cb / n_cb / 1e6:.2f}",
                f"{hand / n_hand / 1e6:.2f}",
                f"{ratio:.4f}",
                "ok" if ratio <= 1.05 else "over",
            ]
        )
    headers = ["method", "steps", "callback, M instructions per step", "hand", "ratio", "verdict"]
    print(markdown_table(headers, rows))
    print(
        "\nThe training loop of each run (on_train_start to on_train_end), in instructions per "
        "training step; ratio = callback / hand (target <= 1.05)."
    )


if __name__ == "__main__":
    main()
