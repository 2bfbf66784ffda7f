"""The eps curve from one minimum-norm run (FMN) against APGD-CE run at every eps of the grid.

For each model of :mod:`scripts.bench.zoo` and each norm (Linf around eps 0.2, L2 around eps 1.0),
on 360 digits (``--split test`` or ``val``, the validation split FMN's step size was chosen on):
robust accuracy at every eps of the default grid (0.25, 0.5, 0.75, 1 and 1.5 × eps) from one FMN
run (100 steps) and from APGD-CE (100 iterations) run at each eps, the largest gap (the issue's
bar: within 1 point), and the cost of the whole FMN curve in APGD-CE runs (bar: under two). Each
APGD-CE run and the FMN run are timed; the FMN run is repeated ``--repeats`` times and the median
taken.

Example (from the repository root)::

    python -m scripts.bench.min_norm --cache /tmp/zoo
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import Tensor, nn

from advtrain.attacks import APGD, FMN

from . import zoo
from .timing import markdown_table, print_machine, set_threads

FACTORS = (0.25, 0.5, 0.75, 1.0, 1.5)
BASE_EPS = {"linf": 0.2, "l2": 1.0}


def curve_row(
    model: nn.Module, x: Tensor, y: Tensor, norm: str, steps: int, repeats: int
) -> list[object]:
    """One table row: both curves, the largest gap, the cost ratio."""
    base = BASE_EPS[norm]
    grid = [f * base for f in FACTORS]
    ids = torch.arange(len(y))
    with torch.no_grad():
        clean = model(x).argmax(1) == y
    apgd_acc, apgd_s = [], []
    for eps in grid:
        t0 = time.perf_counter()
        x_adv = APGD(eps=eps, norm=norm, steps=100, loss="ce", seed=0)(model, x, y, ids=ids)
        apgd_s.append(time.perf_counter() - t0)
        with torch.no_grad():
            apgd_acc.append(float(((model(x_adv).argmax(1) == y) & clean).float().mean()))
    fmn_s = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        norms = FMN(eps=base, norm=norm, steps=steps).min_norm(model, x, y)
        fmn_s.append(time.perf_counter() - t0)
    fmn_acc = [float((clean & (norms > eps * (1 + 1e-6))).float().mean()) for eps in grid]
    gap = max(f - a for f, a in zip(fmn_acc, apgd_acc, strict=True))
    cost = statistics.median(fmn_s) / statistics.mean(apgd_s)
    return [
        norm,
        " / ".join(f"{a:.1%}" for a in apgd_acc),
        " / ".join(f"{a:.1%}" for a in fmn_acc),
        f"{gap * 100:+.1f}",
        f"{cost:.2f}",
    ]


def main() -> None:
    """Command line: ``--models``, ``--norms``, ``--split``, ``--steps``, ``--cache``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=[n for n in zoo.NAMES if n != "masked"])
    parser.add_argument("--norms", nargs="+", default=["linf", "l2"], choices=sorted(BASE_EPS))
    parser.add_argument("--split", default="test", choices=("test", "val"))
    parser.add_argument("--steps", type=int, default=100, help="FMN steps")
    parser.add_argument("--repeats", type=int, default=3, help="timed FMN runs (median)")
    parser.add_argument("--epochs", type=int, default=30, help="training epochs of each model")
    parser.add_argument("--cache", default=None, help="folder caching the trained models")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    set_threads(args.threads)
    print_machine()
    x, y = zoo.splits()[args.split]
    rows = []
    for name in args.models:
        model = zoo.load(name, args.epochs, args.cache)
        for norm in args.norms:
            rows.append([name, *curve_row(model, x, y, norm, args.steps, args.repeats)])
            print(f"{name} {norm}: done", flush=True)
    headers = ["model", "norm", "APGD-CE at each eps (0.25 … 1.5 × eps)", "FMN curve"]
    headers += ["largest gap (points)", "FMN cost (APGD-CE runs)"]
    print(markdown_table(headers, rows))


if __name__ == "__main__":
    main()
