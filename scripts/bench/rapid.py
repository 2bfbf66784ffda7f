"""AutoAttack ``version="rapid"`` against AutoAttack standard, measured in the same run.

For each model, on the 360 held-out sklearn digits at Linf eps 0.2: the robust accuracy of both
protocols (the issue's bar: rapid at most standard + 0.3 points) and the wall-clock ratio
rapid / standard over interleaved pairs (median with its 95% interval; target <= 1/3), and
whether rapid escalated to the standard ensemble. Models:

* ``standard``: a SmallCNN trained without attack (not robust);
* ``madry``: Madry et al.'s PGD-AT (eps 0.2, hand-written loop, :func:`baselines.train_madry`);
* ``masked``: the standard model behind an input quantiser (zero input gradients): white-box
  attacks fail, so rapid must escalate and give the standard ensemble's number.

Example (from the repository root)::

    python -m scripts.bench.rapid --repeats 3 --epochs 30
"""

from __future__ import annotations

import argparse

import torch
from torch import Tensor, nn

from advtrain.attacks import AutoAttack

from .baselines import frozen, sklearn_digits, train_madry
from .timing import interleaved_pairs, markdown_table, print_machine, set_threads

EPS = 0.2


class Quantize(nn.Module):
    """``round(4x) / 4``: a zero input gradient everywhere."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.round(x * 4) / 4


def models(epochs: int) -> dict[str, nn.Module]:
    """The three models of the module docstring (eval mode, frozen)."""
    x_tr, y_tr, _, _ = sklearn_digits()
    standard = frozen(train_madry(x_tr, y_tr, eps=0.0, epochs=max(1, epochs // 2), steps=1))
    madry = frozen(train_madry(x_tr, y_tr, eps=EPS, epochs=epochs))
    return {
        "standard": standard,
        "madry": madry,
        "masked": nn.Sequential(Quantize(), standard).eval(),
    }


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
    return [
        f"{standard.clean_accuracy:.1%}",  # type: ignore[attr-defined]
        f"{standard.robust_accuracy:.1%}",  # type: ignore[attr-defined]
        f"{rapid.robust_accuracy:.1%}",  # type: ignore[attr-defined]
        "yes" if rapid.escalated else "no",  # type: ignore[attr-defined]
        f"{pairs.median('b'):.1f} s",
        f"{pairs.median('a'):.1f} s",
        f"{ratio} ({ratio.verdict(1 / 3)})",
    ]


def main() -> None:
    """Command line: ``--repeats``, ``--epochs``, ``--queries``, ``--threads``, ``--n``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="interleaved pairs per model")
    parser.add_argument("--epochs", type=int, default=30, help="PGD-AT epochs of the madry model")
    parser.add_argument("--queries", type=int, default=5000, help="Square's query budget")
    parser.add_argument("--n", type=int, default=360, help="test digits evaluated")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    set_threads(args.threads)
    print_machine()
    _, _, x, y = sklearn_digits()
    x, y = x[: args.n], y[: args.n]
    rows = []
    for name, model in models(args.epochs).items():
        rows.append([name, *compare(model, x, y, args.repeats, args.queries)])
        print(f"{name}: done", flush=True)
    headers = ["model", "clean", "AA standard", "AA rapid", "escalated", "standard time"]
    headers += ["rapid time", "rapid / standard (median, 95% CI)"]
    print(markdown_table(headers, rows))


if __name__ == "__main__":
    main()
