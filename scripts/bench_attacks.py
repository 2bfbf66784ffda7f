#!/usr/bin/env python
"""Attack speed against hand-written loops measured in the same run, and AutoAttack on digits.

Prints three results:

(a) PGD-10 Linf (batch 128, 3x32x32, a small CNN) against a hand-written loop of
    ``torch.autograd.grad`` steps with the same random start: ratio, target <= 1.05.
(b) APGD-CE with 100 iterations against 100 hand-written forward + input-backward passes
    (with a sign step and a clamp, i.e. the cheapest possible attack loop): ratio, target <= 1.05.
    The wall-clock ratio moves by about ±10% between runs on a shared machine;
    ``scripts/bench_apgd_instructions.py`` measures the same comparison in instructions
    (callgrind), which machine load does not affect.
(c) AutoAttack "standard" on the 360 held-out sklearn digits (8x8) with a SmallCNN trained here
    by a hand-written Madry PGD-AT loop (eps 0.2): clean, PGD-50, per-attack and final robust
    accuracy and the time of each attack. For reference, the original AutoAttack code took about
    46 s on 2 cores for a model of this kind (PGD-50 56.7%, APGD-CE 49.7%, AA 42.2-43.1%).

Timings are interleaved (library then hand-written, then the other way round, ...) and the median
of the per-pair ratios is reported, so a noisy machine affects both sides alike. Example::

    python scripts/bench_attacks.py --repeats 5
    python scripts/bench_attacks.py --skip-autoattack --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advtrain.attacks import APGD, PGD, AutoAttack
from advtrain.models import SmallCNN


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> tuple[float, float]:
    """``(wall seconds, process CPU seconds)`` of one call."""
    sync(device)
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    sync(device)
    return time.perf_counter() - start, time.process_time() - cpu


def compare(
    name: str,
    library: Callable[[], object],
    hand: Callable[[], object],
    repeats: int,
    device: torch.device,
    target: float,
) -> float:
    """Median wall-time ratio library / hand-written over interleaved pairs (CPU time too)."""
    library()  # warm-up
    hand()
    walls: list[tuple[float, float]] = []
    cpus: list[tuple[float, float]] = []
    for i in range(repeats):
        # Alternate which side runs first, so drift within a pair favours neither.
        if i % 2 == 0:
            (lw, lc), (hw, hc) = timed(library, device), timed(hand, device)
        else:
            (hw, hc), (lw, lc) = timed(hand, device), timed(library, device)
        walls.append((lw, hw))
        cpus.append((lc, hc))
    ratio = statistics.median(a / b for a, b in walls)
    cpu_ratio = statistics.median(a / b for a, b in cpus)
    verdict = "OK" if ratio <= target else "ABOVE TARGET"
    print(
        f"{name}: library {statistics.median(a for a, _ in walls) * 1e3:.1f} ms, hand-written "
        f"{statistics.median(b for _, b in walls) * 1e3:.1f} ms, ratio {ratio:.3f} "
        f"(CPU-time ratio {cpu_ratio:.3f}; median of {repeats} interleaved pairs; "
        f"target <= {target}) {verdict}"
    )
    return ratio


# -- (a) and (b): loops on CIFAR-sized inputs ---------------------------------------------------
def frozen(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


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


def hand_passes(model: nn.Module, x: Tensor, y: Tensor, eps: float, passes: int) -> Tensor:
    """``passes`` forward + input-backward passes with a sign step: the cheapest attack loop."""
    x_adv = x.clone()
    for _ in range(passes):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y, reduction="sum")
        (g,) = torch.autograd.grad(loss, x_adv)
        with torch.no_grad():
            x_adv = torch.min(torch.max(x_adv + 0.25 * eps * g.sign(), x - eps), x + eps)
            x_adv = x_adv.clamp(0, 1)
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
def digits(seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    tr, te = train_test_split(
        torch.arange(len(y)).numpy(), test_size=0.2, random_state=seed, stratify=y.numpy()
    )
    return x[tr], y[tr], x[te], y[te]


def train_madry(eps: float, epochs: int, seed: int = 0) -> tuple[nn.Module, Tensor, Tensor]:
    """Madry PGD-AT (PGD-7, step 2.5·eps/7, eps ramped over 30% of the epochs), Adam 1e-3."""
    torch.manual_seed(seed)
    x_tr, y_tr, x_te, y_te = digits(seed)
    model = SmallCNN(input_shape=(1, 8, 8), num_classes=10)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    ramp = max(1, round(0.3 * epochs))
    for epoch in range(epochs):
        eps_now = eps * min(1.0, (epoch + 1) / ramp)
        perm = torch.randperm(x_tr.shape[0])
        for start in range(0, x_tr.shape[0], 64):
            idx = perm[start : start + 64]
            xb, yb = x_tr[idx], y_tr[idx]
            model.eval()
            x_adv = (xb + (torch.rand_like(xb) * 2 - 1) * eps_now).clamp(0, 1)
            for _ in range(7):
                x_adv.requires_grad_(True)
                (g,) = torch.autograd.grad(F.cross_entropy(model(x_adv), yb), x_adv)
                with torch.no_grad():
                    step = x_adv + 2.5 * eps_now / 7 * g.sign()
                    x_adv = torch.min(torch.max(step, xb - eps_now), xb + eps_now).clamp(0, 1)
            model.train()
            loss = F.cross_entropy(model(x_adv.detach()), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return frozen(model), x_te, y_te


def bench_autoattack(args: argparse.Namespace, device: torch.device) -> None:
    eps = 0.2
    t0 = time.perf_counter()
    model, x, y = train_madry(eps, args.epochs)
    print(f"(c) trained the Madry digits SmallCNN in {time.perf_counter() - t0:.1f} s")
    model, x, y = model.to(device), x.to(device), y.to(device)

    def acc(x_adv: Tensor) -> float:
        with torch.no_grad():
            return (model(x_adv).argmax(1) == y).float().mean().item()

    start = time.perf_counter()
    x_pgd = PGD(eps=eps, steps=50, seed=0)(model, x, y)
    sync(device)
    pgd_t = time.perf_counter() - start
    print(f"    clean {acc(x):.2%}  PGD-50 {acc(x_pgd):.2%} ({pgd_t:.1f} s)")
    for repeat in range(args.aa_repeats):
        aa = AutoAttack(eps=eps, version=args.aa_version, seed=repeat)
        start, cpu = time.perf_counter(), time.process_time()
        x_adv = aa(model, x, y)
        sync(device)
        total, cpu = time.perf_counter() - start, time.process_time() - cpu
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
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--epochs", type=int, default=30, help="Madry training epochs for (c)")
    parser.add_argument("--aa-version", default="standard", choices=["standard", "plus", "fast"])
    parser.add_argument("--aa-repeats", type=int, default=1, help="AutoAttack runs (seeds)")
    parser.add_argument("--skip-loops", action="store_true", help="skip (a) and (b)")
    parser.add_argument("--skip-autoattack", action="store_true", help="skip (c)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    if not args.skip_loops:
        bench_loops(args, device)
    if not args.skip_autoattack:
        bench_autoattack(args, device)


if __name__ == "__main__":
    main()
