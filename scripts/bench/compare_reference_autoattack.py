#!/usr/bin/env python
"""Same-model comparison of advtrain's AutoAttack with the reference implementation.

The reference is Croce & Hein's AutoAttack code (github.com/fra31/auto-attack; not on PyPI and
not a dependency of advtrain). Point ``--reference-path`` at a folder that contains its
``autoattack`` package (e.g. a clone of the repository); it is imported from there only, never
installed, and it does not need advtrain (from the repository root)::

    git clone https://github.com/fra31/auto-attack /tmp/ref_autoattack
    flock /tmp/bench.lock python -m scripts.bench.compare_reference_autoattack \
        --reference-path /tmp/ref_autoattack

The model is the issue's "hand-written Madry digits model": advtrain's SmallCNN trained on the
digits training split (1,257 images) by a plain PyTorch loop — PGD-10 adversarial training
(uniform random start, step 2.5·eps/10), eps 0.2 ramped linearly over the first 30% of the
epochs, Adam 1e-3, batch 64, 30 epochs, fixed seed. It is cached in ``--model-cache`` (keyed by
the settings), so the attacks can be rerun on the same weights.

On the 360 test digits at Linf eps 0.2 the script runs, each timed (wall and CPU):

* the reference AutoAttack "standard" (APGD-CE, APGD-T, FAB-T, Square-5000), per member;
* advtrain's ``AutoAttack(version="standard")``, per member;
* advtrain's APGD-CE (100 iterations, 1 restart) and PGD-50 (no restarts) on all examples.

Both ensembles get the frozen model (``requires_grad=False`` on the parameters, eval mode), so
the reference's FAB, which calls ``.backward()``, does not also compute parameter gradients.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import re
import sys
import time
from pathlib import Path

import torch
from torch import Tensor, nn

from advtrain.attacks import APGD, PGD, AutoAttack
from advtrain.data import load_digits_tensors
from advtrain.data.digits import stratified_split
from advtrain.models import SmallCNN

from .baselines import frozen, train_madry
from .timing import print_machine, set_threads, timed


def load_reference(path: str) -> object:
    """Imports the reference's ``autoattack`` package from ``path`` (exits with a message)."""
    root = Path(path).expanduser().resolve()
    pkg = root / "autoattack"
    if not (pkg / "__init__.py").is_file() or not (pkg / "autoattack.py").is_file():
        sys.exit(
            f"error: no reference AutoAttack at {root}: expected {pkg}/__init__.py and "
            f"{pkg}/autoattack.py. Pass --reference-path pointing at a clone of "
            "https://github.com/fra31/auto-attack (the folder that contains the 'autoattack' "
            "package)."
        )
    sys.path.insert(0, str(root))
    try:
        module = importlib.import_module("autoattack")
    finally:
        sys.path.remove(str(root))
    origin = Path(module.__file__ or "").resolve()
    if pkg not in origin.parents:
        sys.exit(f"error: 'autoattack' was imported from {origin}, not from {pkg}")
    return module


def digits_split(seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """advtrain's default digits split (0.7/0.1/0.2, split seed 0): train and test tensors."""
    x, y = load_digits_tensors()
    tr, _, te = stratified_split(y, (0.7, 0.1, 0.2), seed)
    return x[tr], y[tr], x[te], y[te]


_AFTER = re.compile(r"robust accuracy after (\S+): ([\d.]+)% \(total time ([\d.]+) s\)")


def run_reference(
    ref: object, model: nn.Module, x: Tensor, y: Tensor, eps: float, seed: int, bs: int
) -> tuple[Tensor, float, float, list[tuple[str, float, float]]]:
    """Reference AutoAttack standard; returns x_adv, wall, CPU and its per-member log."""
    log = io.StringIO()
    aa = ref.AutoAttack(  # type: ignore[attr-defined]
        model, norm="Linf", eps=eps, version="standard", seed=seed, device="cpu", verbose=True
    )
    with contextlib.redirect_stdout(log):
        x_adv, wall, cpu = timed(lambda: aa.run_standard_evaluation(x, y, bs))
    members = []
    prev = 0.0
    for name, acc, total in _AFTER.findall(log.getvalue()):
        members.append((name.lower(), float(acc), float(total) - prev))
        prev = float(total)
    warnings = [line for line in log.getvalue().splitlines() if line.startswith("Warning")]
    for line in warnings:
        print(f"    reference says: {line}")
    return x_adv, wall, cpu, members


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--reference-path",
        required=True,
        help="folder containing the reference's 'autoattack' package (a fra31/auto-attack clone)",
    )
    parser.add_argument("--eps", type=float, default=0.2)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--train-steps", type=int, default=10, help="PGD steps in training")
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0], help="attack seeds (each runs both AAs)"
    )
    parser.add_argument("--ref-bs", type=int, default=250, help="reference batch (its default)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument(
        "--model-cache",
        default="/tmp/advtrain_madry_digits_{epochs}ep_pgd{steps}_eps{eps}_seed{seed}.pt",
        help="where the trained weights are cached ('' to always retrain)",
    )
    parser.add_argument("--skip-reference", action="store_true", help="advtrain attacks only")
    args = parser.parse_args()
    ref = None if args.skip_reference else load_reference(args.reference_path)
    set_threads(args.threads)
    print_machine()

    x_tr, y_tr, x, y = digits_split()
    cache = args.model_cache.format(
        epochs=args.epochs, steps=args.train_steps, eps=args.eps, seed=args.seed
    )
    model = SmallCNN(input_shape=(1, 8, 8), num_classes=10)
    if cache and Path(cache).is_file():
        model.load_state_dict(torch.load(cache, weights_only=True))
        print(f"loaded the Madry digits model from {cache}")
    else:
        t0 = time.perf_counter()
        model = train_madry(x_tr, y_tr, args.eps, args.epochs, args.train_steps, args.seed)
        print(f"trained the Madry digits model in {time.perf_counter() - t0:.1f} s")
        if cache:
            torch.save(model.state_dict(), cache)
            print(f"saved it to {cache}")
    model = frozen(model)

    def acc(x_adv: Tensor) -> float:
        with torch.no_grad():
            return 100.0 * (model(x_adv).argmax(1) == y).float().mean().item()

    print(f"{x.shape[0]} test digits, Linf eps {args.eps}, clean accuracy {acc(x):.1f}%")
    for seed in args.seeds:
        pgd = PGD(eps=args.eps, steps=50, seed=seed)
        x_pgd, w, c = timed(lambda pgd=pgd: pgd(model, x, y))
        print(f"[seed {seed}] advtrain PGD-50 (1 restart)   {acc(x_pgd):5.1f}%  {w:6.1f} s wall")
        apgd = APGD(eps=args.eps, steps=100, seed=seed)
        x_apgd, w, c = timed(lambda apgd=apgd: apgd(model, x, y))
        print(f"[seed {seed}] advtrain APGD-CE (100 it.)    {acc(x_apgd):5.1f}%  {w:6.1f} s wall")
        aa = AutoAttack(eps=args.eps, version="standard", seed=seed)
        x_aa, w, c = timed(lambda aa=aa: aa(model, x, y))
        res = aa.last_result
        assert res is not None
        members = ", ".join(
            f"{n} {100 * res.accuracies[n]:.1f}% ({res.seconds[n]:.1f} s)" for n in res.attacks
        )
        print(
            f"[seed {seed}] advtrain AutoAttack standard  {acc(x_aa):5.1f}%  {w:6.1f} s wall "
            f"({c:.1f} s CPU); after {members}"
        )
        if ref is not None:
            x_ref, w, c, log = run_reference(ref, model, x, y, args.eps, seed, args.ref_bs)
            members = ", ".join(f"{n} {a:.1f}% ({s:.1f} s)" for n, a, s in log)
            print(
                f"[seed {seed}] reference AutoAttack standard {acc(x_ref):5.1f}%  {w:6.1f} s "
                f"wall ({c:.1f} s CPU); after {members}"
            )
            linf = (x_ref - x).abs().flatten(1).amax(1).max().item()
            if linf > args.eps + 1e-6:
                print(f"    warning: reference output leaves the ball (max Linf {linf:.4f})")


if __name__ == "__main__":
    main()
