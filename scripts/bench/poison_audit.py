"""The poisoning audit on a real backdoor: BadNets on the digits training split.

For each poison rate (5%, 10%) and seed (0-2): a SmallCNN trained 30 epochs on the digits
training split with BadNets poisons (2×2 patch of 1.0 in the bottom-right corner, target class 0),
then :func:`advtrain.audit.audit_poisoning` *without being told the target*: the classes it calls
poisoned, the share of the poisons it flags and the flagged set's size against their number
(issue #21's bar: the poisoned class named, >= 90% of the poisons in a set <= 1.5× their number),
then a model retrained without the flagged examples: attack success rate (triggered test digits of
the other classes classified as 0; bar: below 10%) and clean accuracy (bar: within 1 point of a
model trained on the clean split, same seed). Unpoisoned runs (seeds 0-2): the classes flagged
(bar: none). For comparison, the textbook detectors *told* the target class: spectral signatures
flagging the top 1.5× the number of poisons, and activation clustering's smaller cluster.

Settings of the audit were chosen on the training split's poisons (what the detector sees); test
digits are used only for the attack success rate and clean accuracy reported here.

Example (from the repository root)::

    python -m scripts.bench.poison_audit
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advtrain.audit import (
    activation_clustering,
    audit_poisoning,
    layer_inputs,
    spectral_signature_scores,
)
from advtrain.data import DigitsDataModule
from advtrain.data.poison import BadNets, attack_success_rate
from advtrain.models import SmallCNN

from .timing import markdown_table, print_machine, set_threads

CLEAN_ACCURACY: dict[int, float] = {}


def train(x: Tensor, y: Tensor, seed: int, epochs: int) -> nn.Module:
    """SmallCNN, Adam 1e-3, batch 64, ``epochs`` epochs (eval mode)."""
    torch.manual_seed(seed)
    model = SmallCNN()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    for _ in range(epochs):
        perm = torch.randperm(len(y))
        for i in range(0, len(y), 64):
            b = perm[i : i + 64]
            loss = F.cross_entropy(model(x[b]), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def textbook(features: Tensor, y: Tensor, poisons: np.ndarray, target: int) -> tuple[float, float]:
    """Recall of spectral signatures (top 1.5x) and activation clustering, told the target."""
    members = (y == target).nonzero().squeeze(1).numpy()
    own = features[members]
    k = int(1.5 * poisons.sum())
    top = members[np.argsort(-spectral_signature_scores(own).numpy())[:k]]
    clusters = activation_clustering(own)
    small = members[clusters.labels.numpy() == 1]
    return poisons[top].sum() / poisons.sum(), poisons[small].sum() / poisons.sum()


def run(rate: float, seed: int, epochs: int, data: dict[str, Tensor]) -> list[object]:
    """One table row."""
    x, y, x_te, y_te = data["x"], data["y"], data["x_te"], data["y_te"]
    spec = BadNets(target=0, rate=rate, seed=seed) if rate > 0 else BadNets(target=0, rate=0.1)
    if rate > 0:
        xp, yp, idx = spec.poison(x, y, num_classes=10)
    else:
        xp, yp, idx = x, y, torch.zeros(0, dtype=torch.long)
    model = train(xp, yp, seed, epochs)
    t0 = time.perf_counter()
    batches = [xp[i : i + 512] for i in range(0, len(yp), 512)]
    feats = layer_inputs(model, batches, "last_linear")
    probe = layer_inputs(model, batches, "first_linear")
    result = audit_poisoning(feats, yp, probe, seed=seed)
    seconds = time.perf_counter() - t0
    flagged = result.flagged.numpy()
    poisons = np.zeros(len(yp), dtype=bool)
    poisons[idx.numpy()] = True
    named = ",".join(str(c) for c in result.poisoned_classes) or "none"
    if seed not in CLEAN_ACCURACY:  # the clean run of this seed, trained once
        CLEAN_ACCURACY[seed] = accuracy(train(x, y, seed, epochs), x_te, y_te)
    clean_ref = CLEAN_ACCURACY[seed]
    row: list[object] = [f"{rate:.0%}", seed, int(poisons.sum()), named, len(flagged)]
    if rate > 0:
        recall = poisons[flagged].sum() / poisons.sum()
        ratio = len(flagged) / poisons.sum()
        keep = np.ones(len(yp), dtype=bool)
        keep[flagged] = False
        retrained = train(xp[keep], yp[keep], seed, epochs)
        spectral, ac = textbook(feats, yp, poisons, 0)
        row += [
            f"{recall:.1%}",
            f"{ratio:.2f}",
            f"{attack_success_rate(model, x_te, y_te, spec):.1%}",
            f"{attack_success_rate(retrained, x_te, y_te, spec):.1%}",
            f"{accuracy(model, x_te, y_te):.1%}",
            f"{accuracy(retrained, x_te, y_te):.1%}",
            f"{clean_ref:.1%}",
            f"{spectral:.1%}",
            f"{ac:.1%}",
        ]
    else:
        row += ["-", "-", f"{attack_success_rate(model, x_te, y_te, spec):.1%}", "-"]
        row += [f"{accuracy(model, x_te, y_te):.1%}", "-", f"{clean_ref:.1%}", "-", "-"]
    return [*row, f"{seconds:.1f} s"]


def main() -> None:
    """Command line: ``--epochs``, ``--seeds``, ``--rates``, ``--threads``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rates", type=float, nargs="+", default=[0.05, 0.1, 0.0])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    set_threads(args.threads)
    print_machine()
    dm = DigitsDataModule()
    dm.setup()
    x, y = dm.train_set.tensors  # type: ignore[union-attr]
    x_te, y_te = dm.test_tensors()
    data = {"x": x, "y": y, "x_te": x_te, "y_te": y_te}
    rows = []
    for rate in args.rates:
        for seed in args.seeds:
            rows.append(run(rate, seed, args.epochs, data))
            print(f"rate {rate} seed {seed}: {rows[-1]}", flush=True)
    headers = ["poison rate", "seed", "poisons", "classes named", "flagged", "poisons flagged"]
    headers += ["flagged / poisons", "ASR", "ASR retrained", "clean acc", "clean acc retrained"]
    headers += ["clean acc, clean run", "spectral (told target, 1.5x)", "AC (told target)"]
    headers += ["audit time"]
    print(markdown_table(headers, rows))


if __name__ == "__main__":
    main()
