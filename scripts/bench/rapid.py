"""AutoAttack ``version="rapid"`` against AutoAttack standard, measured in the same run.

For each model of :mod:`scripts.bench.zoo` (standard, Madry PGD-AT, TRADES, Fast-AT, IBP-trained
and a model with masked gradients), on 360 digits (``--split test``, the default, or ``val``: the
validation split the protocol's settings were chosen on) at Linf eps 0.2: the robust accuracy of
both protocols (the issue's bar: rapid at most standard + 0.3 points), whether rapid escalated
and how far (the fraction of the still-robust examples its Square covered), the wall-clock ratio
rapid / standard over interleaved pairs (median with its 95% interval; target <= 1/3), and the
ratio of model work: example passes through the model, a pass with gradients counted as 3 (a
forward and a backward), which does not depend on the machine or on per-call overheads.

Example (from the repository root)::

    python -m scripts.bench.rapid --repeats 3 --epochs 30 --cache /tmp/zoo

``--reference-path DIR`` (a checkout of github.com/fra31/auto-attack, imported from there only,
never installed) adds the reference AutoAttack standard on the same model and digits, once.
"""

from __future__ import annotations

import argparse

import torch
from torch import Tensor, nn

from advtrain.attacks import AutoAttack

from . import zoo
from .compare_reference_autoattack import load_reference, run_reference
from .timing import interleaved_pairs, markdown_table, print_machine, set_threads

EPS = zoo.EPS


class Counted(nn.Module):
    """The model, counting example passes: 1 per example without gradients, 3 with them."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.work = 0

    def forward(self, x: Tensor) -> Tensor:
        self.work += x.shape[0] * (3 if torch.is_grad_enabled() and x.requires_grad else 1)
        return self.model(x)


def work(model: nn.Module, x: Tensor, y: Tensor, version: str, queries: int) -> int:
    """Example passes of one AutoAttack call (see :class:`Counted`)."""
    counted = Counted(model)
    AutoAttack(eps=EPS, version=version, seed=0, n_queries=queries)(
        counted, x, y, ids=torch.arange(len(y))
    )
    return counted.work


def reference_row(ref: object, model: nn.Module, x: Tensor, y: Tensor) -> list[object]:
    """The reference AutoAttack standard on the same model and digits: accuracy and time."""
    x_adv, wall, _, _ = run_reference(ref, model, x, y, EPS, seed=0, bs=len(y))
    with torch.no_grad():
        acc = float((model(x_adv).argmax(1) == y).float().mean())
    return [f"{acc:.1%}", f"{wall:.1f} s"]


def compare(model: nn.Module, x: Tensor, y: Tensor, repeats: int, queries: int) -> list[object]:
    """One table row: accuracies, escalation, time ratio."""
    out: dict[str, object] = {}
    ids = torch.arange(len(y))

    def run(version: str) -> None:
        attack = AutoAttack(eps=EPS, version=version, seed=0, n_queries=queries)
        attack(model, x, y, ids=ids)  # per-example draws, as the evaluation pipeline passes
        out[version] = attack.last_result

    pairs = interleaved_pairs(lambda: run("rapid"), lambda: run("standard"), repeats, warmup=0)
    rapid, standard = out["rapid"], out["standard"]
    ratio = pairs.ratio()
    work_ratio = work(model, x, y, "rapid", queries) / work(model, x, y, "standard", queries)
    return [
        f"{standard.clean_accuracy:.1%}",  # type: ignore[attr-defined]
        f"{standard.robust_accuracy:.1%}",  # type: ignore[attr-defined]
        f"{rapid.robust_accuracy:.1%}",  # type: ignore[attr-defined]
        f"{rapid.escalation_coverage:.0%}" if rapid.escalated else "no",  # type: ignore[attr-defined]
        f"{pairs.median('b'):.1f} s",
        f"{pairs.median('a'):.1f} s",
        f"{ratio} ({ratio.verdict(1 / 3)})",
        f"{work_ratio:.2f}",
    ]


def main() -> None:
    """Command line: ``--repeats``, ``--epochs``, ``--queries``, ``--threads``, ``--n``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="interleaved pairs per model")
    parser.add_argument("--epochs", type=int, default=30, help="training epochs of each model")
    parser.add_argument("--models", nargs="+", default=list(zoo.NAMES), choices=zoo.NAMES)
    parser.add_argument("--split", default="test", choices=("test", "val"))
    parser.add_argument("--cache", default=None, help="folder caching the trained models")
    parser.add_argument("--queries", type=int, default=5000, help="Square's query budget")
    parser.add_argument("--n", type=int, default=360, help="test digits evaluated")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument(
        "--reference-path",
        default=None,
        help="a fra31/auto-attack checkout: its AutoAttack standard runs once per model too",
    )
    args = parser.parse_args()
    ref = None if args.reference_path is None else load_reference(args.reference_path)
    set_threads(args.threads)
    print_machine()
    x, y = zoo.splits()[args.split]
    x, y = x[: args.n], y[: args.n]
    rows = []
    for name in args.models:
        model = zoo.load(name, args.epochs, args.cache)
        row = [name, *compare(model, x, y, args.repeats, args.queries)]
        if ref is not None:
            row += reference_row(ref, model, x, y)
        rows.append(row)
        print(f"{name}: done", flush=True)
    headers = ["model", "clean", "AA standard", "AA rapid", "escalated (coverage)"]
    headers += ["standard time"]
    headers += ["rapid time", "rapid / standard (median, 95% CI)", "model work rapid / standard"]
    if ref is not None:
        headers += ["reference standard", "reference time"]
    print(markdown_table(headers, rows))


if __name__ == "__main__":
    main()
