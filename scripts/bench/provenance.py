"""Cost of data provenance on the default run: hashing the training split against ``fit``.

Runs the default ``advtrain-train`` recipe (digits, PGD-AT, 30 epochs) with its evaluation cut
to a token (as :mod:`scripts.bench.methods` does) and reads the report's ``timings_s.fit``; in
the same process, times :func:`advtrain.provenance.manifest_of` on the same training split
(median of ``--repeats``) and on a CIFAR-10-sized tensor dataset (50,000 × 3×32×32) for scale.
The issue's bar: provenance under 2% of the fit time.

Example (from the repository root)::

    python -m scripts.bench.provenance --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from torch.utils.data import TensorDataset

from advtrain.cli.config import compose
from advtrain.cli.train import run
from advtrain.data import DigitsDataModule
from advtrain.provenance import manifest_of

from .methods import SHRINK_EVALUATION
from .timing import markdown_table, print_machine, quiet_lightning, set_threads


def _median_seconds(fn: object, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    """Command line: ``--repeats``, ``--threads``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    set_threads(args.threads)
    print_machine()
    quiet_lightning()
    with tempfile.TemporaryDirectory() as out:
        report = run(compose(overrides=SHRINK_EVALUATION, output_dir=out))
    assert report is not None
    fit = float(report["timings_s"]["fit"])
    dm = DigitsDataModule()
    dm.setup()
    digits = _median_seconds(lambda: manifest_of(dm.train_set), args.repeats)
    gen = torch.Generator().manual_seed(0)
    cifar = TensorDataset(
        torch.rand(50_000, 3, 32, 32, generator=gen), torch.randint(0, 10, (50_000,), generator=gen)
    )
    big = _median_seconds(lambda: manifest_of(cifar), 1)
    rows = [
        [
            "digits training split (1,257)",
            f"{digits * 1e3:.1f} ms",
            f"{fit:.1f} s",
            f"{digits / fit:.2%}",
        ],
        ["CIFAR-10-sized tensors (50,000 × 3×32×32)", f"{big:.1f} s", "", ""],
    ]
    print(markdown_table(["data", "manifest", "fit (default run)", "manifest / fit"], rows))


if __name__ == "__main__":
    main()
