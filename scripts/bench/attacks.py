"""Attack speed against hand-written loops measured in the same run, and AutoAttack on digits.

Prints three results:

(a) PGD-10 Linf (batch 128, 3x32x32, a small CNN) against a hand-written loop of
    ``torch.autograd.grad`` steps with the same random start: ratio, target <= 1.05.
(b) APGD-CE with 100 iterations against 100 hand-written forward + input-backward passes
    (with a sign step and a clamp, i.e. the cheapest possible attack loop): ratio, target <= 1.05.
    The wall-clock ratio moves by about ±10% between runs on a shared machine;
    ``apgd_instructions`` measures the same comparison in instructions (callgrind), which
    machine load does not affect.
(c) AutoAttack "standard" on the 360 held-out sklearn digits (8x8) with a SmallCNN trained here
    by a hand-written Madry PGD-AT loop (eps 0.2): clean, PGD-50, per-attack and final robust
    accuracy and the time of each attack. For reference, the original AutoAttack code took about
    46 s on 2 cores for a model of this kind (PGD-50 56.7%, APGD-CE 49.7%, AA 42.2-43.1%).

Timings are interleaved pairs (library then hand-written, then the other way round, ...); the
median of the per-pair ratios is reported with its 95% interval, so a noisy machine affects both
sides alike. Example (from the repository root)::

    python -m scripts.bench.attacks --repeats 5
    python -m scripts.bench.attacks --skip-autoattack --threads 2
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advtrain.attacks import APGD, PGD, AutoAttack
from advtrain.models import SmallCNN

from .baselines import frozen, hand_passes, sklearn_digits, train_madry
from .timing import interleaved_pairs, print_machine, set_threads, timed


def compare(
    name: str,
    library: Callable[[], object],
    hand: Callable[[], object],
    repeats: int,
    device: torch.device,
    target: float,
) -> float:
    """Median wall-time ratio library / hand-written over interleaved pairs (CPU time too)."""
    pairs = interleaved_pairs(library, hand, repeats, device)
    ratio, cpu_ratio = pairs.ratio("wall"), pairs.ratio("cpu")
    print(
        f"{name}: library {pairs.median('a') * 1e3:.1f} ms, hand-written "
        f"{pairs.median('b') * 1e3:.1f} ms, ratio {ratio} (CPU-time ratio {cpu_ratio}; median "
        f"[95% CI] of {repeats} interleaved pairs; target <= {target}) {ratio.verdict(target)}"
    )
    return ratio.median


# -- (a) and (b): loops on CIFAR-sized inputs ---------------------------------------------------
def hand_pgd(model: nn.Module, x: Tensor, y: Tensor, eps: float, steps: int, seed: int) -> Tensor:
    """Madry PGD with a uniform random start, written out with autograd.grad."""
    gen = torch.Generator(device=x.device).manual_seed(seed)
    alpha = 2.5 * eps / steps
    noise = torch.rand(x.shape, generator=gen, device=x.device, dtype=x.dtype)
    x_adv = (x + (2 * noise - 1) * eps).clamp(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y, reduction="sum")
        (g,) = torch.autograd.grad(loss, x_adv)
        with torch.no_grad():
            x_adv = torch.min(torch.max(x_adv + alpha * g.sign(), x - eps), x + eps).clamp(0, 1)
    return x_adv


def bench_loops(args: argparse.Namespace, device: torch.device) -> None:
    torch.manual_seed(0)
    model = frozen(SmallCNN(input_shape=(3, 32, 32), num_classes=10, width=16, hidden=64))
    model = model.to(device)
    x = torch.rand(args.batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    eps = 8 / 255
    pgd = PGD(eps=eps, steps=10, seed=0)
    compare(
        "(a) PGD-10 Linf",
        lambda: pgd(model, x, y),
        lambda: hand_pgd(model, x, y, eps, 10, 0),
        args.repeats,
        device,
        1.05,
    )
    # APGD attacks only correctly classified examples and stops early once all are fooled: label
    # with the model's own predictions and use a radius too small to fool any, so that all 100
    # iterations run on the full batch, as the hand-written loop does.
    with torch.no_grad():
        y_pred = model(x).argmax(1)
    eps_b = 1e-4
    apgd = APGD(eps=eps_b, steps=100, seed=0)
    with torch.no_grad():
        fooled = (model(apgd(model, x, y_pred)).argmax(1) != y_pred).sum().item()
    if fooled:
        print(f"(b) warning: {fooled} examples fooled, APGD stops early on them")
    compare(
        "(b) APGD-CE 100 it.",
        lambda: apgd(model, x, y_pred),
        lambda: hand_passes(model, x, y_pred, eps_b, 100),
        max(1, args.repeats // 2),
        device,
        1.05,
    )


# -- (c): AutoAttack on a hand-trained Madry digits model -------------------------------------
def bench_autoattack(args: argparse.Namespace, device: torch.device) -> None:
    eps = 0.2
    t0 = time.perf_counter()
    x_tr, y_tr, x, y = sklearn_digits(0)
    model = frozen(train_madry(x_tr, y_tr, eps, args.epochs, steps=7, seed=0))
    print(f"(c) trained the Madry digits SmallCNN in {time.perf_counter() - t0:.1f} s")
    model, x, y = model.to(device), x.to(device), y.to(device)

    def acc(x_adv: Tensor) -> float:
        with torch.no_grad():
            return (model(x_adv).argmax(1) == y).float().mean().item()

    x_pgd, pgd_t, _ = timed(lambda: PGD(eps=eps, steps=50, seed=0)(model, x, y), device)
    print(f"    clean {acc(x):.2%}  PGD-50 {acc(x_pgd):.2%} ({pgd_t:.1f} s)")
    for repeat in range(args.aa_repeats):
        aa = AutoAttack(eps=eps, version=args.aa_version, seed=repeat)
        x_adv, total, cpu = timed(lambda aa=aa: aa(model, x, y), device)
        result = aa.last_result
        assert result is not None
        steps = ", ".join(
            f"{name} {result.accuracies[name]:.2%} ({result.seconds[name]:.1f} s)"
            for name in result.attacks
        )
        print(
            f"    AutoAttack {args.aa_version} (seed {repeat}): robust {acc(x_adv):.2%} in "
            f"{total:.1f} s wall ({cpu:.1f} s CPU) for {x.shape[0]} examples; after each "
            f"attack: {steps}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed pairs for (a) (b: half)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--epochs", type=int, default=30, help="Madry training epochs for (c)")
    parser.add_argument("--aa-version", default="standard", choices=["standard", "plus", "fast"])
    parser.add_argument("--aa-repeats", type=int, default=1, help="AutoAttack runs (seeds)")
    parser.add_argument("--skip-loops", action="store_true", help="skip (a) and (b)")
    parser.add_argument("--skip-autoattack", action="store_true", help="skip (c)")
    args = parser.parse_args()
    set_threads(args.threads)
    device = torch.device(args.device)
    print_machine(device)
    if not args.skip_loops:
        bench_loops(args, device)
    if not args.skip_autoattack:
        bench_autoattack(args, device)


if __name__ == "__main__":
    main()
