"""Training cost of each command-line method on digits, measured the way ``advtrain-train`` runs it.

For each method (``standard``, ``pgd_at``, ``fast_at``, ``free_at`` by default) this composes the
real ``train`` config (the default recipe: SmallCNN, digits, Linf eps 0.2, 30 epochs; Free-AT
divides them by its m replays), trains through :func:`advtrain.cli.train.run` with the final
evaluation cut to almost nothing, and records

* ``train_steps``: wall time inside training batches (attack, forward, backward, optimizer step
  and per-batch callbacks such as the catastrophic-overfitting guard; the report's
  ``timings_s.train_steps``),
* the same span in process CPU time (steadier on a shared machine),
* ``fit``: the whole ``Trainer.fit`` (adds validation, robust validation and checkpoints).

Methods are interleaved within each repeat (the order rotates) and the medians are compared with
PGD-AT and standard training measured in the same run. Accuracy is not measured here: run
``advtrain-train method=NAME`` for the report with AutoAttack.

Usage (from the repository root)::

    flock /tmp/bench.lock python -m scripts.bench.methods --repeats 3
    python -m scripts.bench.methods --methods fast_at pgd_at --repeats 2 -- trainer.max_epochs=10
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from typing import Any

import pytorch_lightning as pl
import torch

from advtrain.cli.config import compose
from advtrain.cli.train import run

from .timing import markdown_table, print_machine, quiet_lightning, rotation, set_threads

#: The final evaluation is not what is timed here; keep it to a token PGD-1 on 16 digits.
SHRINK_EVALUATION = [
    "evaluation=standard",
    "evaluation.n_examples=16",
    "~evaluation.attacks.autoattack",
    "evaluation.attacks.pgd-50x5.steps=1",
    "evaluation.attacks.pgd-50x5.restarts=1",
    "evaluation.eps_grid.factors=[]",
    "trainer.enable_progress_bar=false",
]


class CPUStepTimer(pl.Callback):
    """Process CPU time spent inside training batches."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._start: float | None = None

    def on_train_batch_start(self, *args: Any, **kwargs: Any) -> None:
        self._start = time.process_time()

    def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
        if self._start is not None:
            self.seconds += time.process_time() - self._start
            self._start = None


def measure(spec: str, overrides: list[str]) -> dict[str, float]:
    """Trains ``spec`` once; returns its training times in seconds.

    ``spec`` is a method name, optionally followed by ``:``-separated overrides of its own
    (``fast_at:module.lr=0.005``).
    """
    method, *own = spec.split(":")
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose(
            overrides=[f"method={method}", *SHRINK_EVALUATION, *overrides, *own], output_dir=tmp
        )
        timer = CPUStepTimer()
        report = run(cfg, extra_callbacks=[timer])
    assert report is not None
    timings = report["timings_s"]
    return {
        "train_steps": float(timings["train_steps"]),
        "train_steps_cpu": timer.seconds,
        "fit": float(timings["fit"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--methods",
        nargs="*",
        default=["standard", "pgd_at", "fast_at", "free_at"],
        help="method names, each optionally with its own overrides: fast_at:module.lr=0.005",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every method")
    args = parser.parse_args()
    set_threads(args.threads)
    quiet_lightning()
    print_machine()

    results: dict[str, list[dict[str, float]]] = {m: [] for m in args.methods}
    for rep in range(args.repeats):
        for method in rotation(args.methods, rep):
            r = measure(method, list(args.overrides))
            results[method].append(r)
            print(
                f"[rep {rep}] {method} train_steps {r['train_steps']:6.1f}s "
                f"(CPU {r['train_steps_cpu']:6.1f}s)  fit {r['fit']:6.1f}s",
                flush=True,
            )

    def med(method: str, key: str) -> float:
        return statistics.median(r[key] for r in results[method])

    print(
        f"\n{args.repeats} repeats, torch threads {torch.get_num_threads()}, overrides "
        f"{args.overrides or 'none'}; medians\n"
    )
    refs = [m for m in ("pgd_at", "standard") if m in results]
    headers = ["method", "train_steps s", "CPU s", "fit s"]
    headers += [f"/ {ref} (wall, CPU)" for ref in refs]
    rows = []
    for method in args.methods:
        keys = ("train_steps", "train_steps_cpu", "fit")
        row = [method, *(f"{med(method, k):.1f}" for k in keys)]
        for ref in refs:
            wall = med(method, "train_steps") / med(ref, "train_steps")
            cpu = med(method, "train_steps_cpu") / med(ref, "train_steps_cpu")
            row.append(f"{wall:.3f}, {cpu:.3f}")
        rows.append(row)
    print(markdown_table(headers, rows))


if __name__ == "__main__":
    main()
