"""The digits models the evaluation benchmarks attack, one per training method the test suite runs.

Each is a SmallCNN on scikit-learn's 8×8 digits (Linf eps 0.2), trained by a plain loop on the
first 1,077 training digits; the last 360 training digits are the **validation split** on which
the evaluation protocols' settings are chosen, and the 360 test digits are reported on.

* ``standard``: no attack (not robust);
* ``madry``: Madry et al.'s PGD-AT, the hand-written loop of :func:`baselines.train_madry`;
* ``trades``: TRADES (Zhang et al., ICML 2019), beta 6, :class:`advtrain.losses.TRADESLoss`;
* ``fast_at``: Fast-AT (Wong et al., ICLR 2020), FGSM with a uniform random start, step 1.25 eps;
* ``ibp``: IBP-trained (Gowal et al. 2018), :class:`advtrain.losses.IBPLoss`, eps and kappa
  ramped;
* ``masked``: the standard model behind an input quantiser (zero input gradients): white-box
  attacks fail, so a protocol must notice and fall back on black-box ones.

Models are cached under ``--cache`` (keyed by name, epochs and seed), so several benchmarks attack
the same weights.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advtrain.attacks import FGSM, PGD
from advtrain.losses import IBPLoss, TRADESLoss

from .baselines import frozen, sklearn_digits, train_loop, train_madry

EPS = 0.2
N_VAL = 360
NAMES = ("standard", "madry", "trades", "fast_at", "ibp", "masked")


class Quantize(nn.Module):
    """``round(4x) / 4``: a zero input gradient everywhere."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.round(x * 4) / 4


def splits(seed: int = 0) -> dict[str, tuple[Tensor, Tensor]]:
    """``train`` (1,077), ``val`` (the last 360 training digits) and ``test`` (360)."""
    x_tr, y_tr, x_te, y_te = sklearn_digits(seed)
    return {
        "train": (x_tr[:-N_VAL], y_tr[:-N_VAL]),
        "val": (x_tr[-N_VAL:], y_tr[-N_VAL:]),
        "test": (x_te, y_te),
    }


def _standard(model: nn.Module, x: Tensor, y: Tensor, eps: float, progress: float) -> Tensor:
    return F.cross_entropy(model(x), y)


def _trades(model: nn.Module, x: Tensor, y: Tensor, eps: float, progress: float) -> Tensor:
    attack = PGD(eps=eps, steps=7, alpha=2.5 * eps / 7, loss="ce")
    return TRADESLoss(beta=6.0, attack=attack)(model, x, y)[0]


def _fast_at(model: nn.Module, x: Tensor, y: Tensor, eps: float, progress: float) -> Tensor:
    model.eval()
    x_adv = FGSM(eps=eps, alpha=1.25 * eps, random_start=True)(model, x, y)
    model.train()
    return F.cross_entropy(model(x_adv), y)


def _ibp(model: nn.Module, x: Tensor, y: Tensor, eps: float, progress: float) -> Tensor:
    kappa = max(0.5, 1.0 - progress)  # 1 → 0.5 (Gowal et al.)
    return IBPLoss(eps=eps, kappa=kappa)(model, x, y)[0]


def train(name: str, epochs: int, seed: int = 0) -> nn.Module:
    """One model of :data:`NAMES`, trained on the ``train`` split (eval mode, frozen)."""
    x, y = splits(seed)["train"]
    if name == "masked":
        return nn.Sequential(Quantize(), train("standard", epochs, seed)).eval()
    if name == "madry":
        return frozen(train_madry(x, y, eps=EPS, epochs=epochs, seed=seed))
    loss = {"standard": _standard, "trades": _trades, "fast_at": _fast_at, "ibp": _ibp}[name]
    budget = max(1, epochs // 2) if name == "standard" else epochs
    return frozen(train_loop(x, y, budget, loss, EPS, seed))


def load(name: str, epochs: int, cache: str | None, seed: int = 0) -> nn.Module:
    """:func:`train`'s model, from ``cache`` when it holds it (whole-module pickles the benchmark
    wrote itself)."""
    if cache is None:
        return train(name, epochs, seed)
    path = Path(cache) / f"{name}_e{epochs}_s{seed}.pt"
    if path.is_file():
        return torch.load(path, weights_only=False).eval()
    model = train(name, epochs, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model, path)
    return model


__all__ = ["EPS", "NAMES", "Quantize", "load", "splits", "train"]
