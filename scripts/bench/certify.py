"""Benchmark of randomized-smoothing certification (advtrain.certify.Smooth).

Two measurements, both against baselines measured in the same run:

1. **Overhead.** ``Smooth.certify`` on a few digits versus a hand-written loop doing only the
   ``n0 + n`` noisy forward passes (noise, add, model) in the same batches — interleaved pairs
   (one per repeat and example, the order alternating), median ratio with its 95% interval.
   Target: <= 1.05x.
2. **Sequential vs standard.** A SmallCNN trained with ``GaussianNoiseLoss(σ = 0.25)`` on digits,
   certified on the test set with Cohen et al.'s CERTIFY (``n0 = 100``, ``n = 10,000``,
   ``alpha = 0.001``) and with ``mode="sequential"`` at r = 0.25 and r = 0.5. Target: certified
   accuracy within 1 point at each r with >= 2x fewer forward passes on average.

Usage (from the repository root)::

    python -m scripts.bench.certify                 # the issue's settings (a few minutes on CPU)
    python -m scripts.bench.certify --quick         # smaller n and fewer examples
    python -m scripts.bench.certify --device cuda
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import Tensor, nn

from advtrain.certify import Smooth, certify_dataset
from advtrain.losses import GaussianNoiseLoss
from advtrain.models import SmallCNN

from .baselines import sklearn_digits
from .timing import Pairs, print_machine, rotation, set_threads, timed


def train(x: Tensor, y: Tensor, sigma: float, epochs: int, device: torch.device) -> nn.Module:
    """SmallCNN, Adam 1e-3, batch 64, Gaussian-noise training (Cohen et al. 2019)."""
    torch.manual_seed(0)
    model = SmallCNN((1, 8, 8), 10).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = GaussianNoiseLoss(sigma=sigma, seed=0)
    x, y = x.to(device), y.to(device)
    g = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        perm = torch.randperm(x.shape[0], generator=g).to(device)
        for i in range(0, x.shape[0], 64):
            idx = perm[i : i + 64]
            loss, _ = loss_fn(model, x[idx], y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def baseline_forward_passes(
    model: nn.Module, x: Tensor, sigma: float, n0: int, n: int, batch_size: int
) -> None:
    """Only the noisy forward passes CERTIFY needs for one example: no counting, no statistics."""
    gen = torch.Generator(device=x.device).manual_seed(0)
    with torch.inference_mode():
        for total in (n0, n):
            for start in range(0, total, batch_size):
                m = min(batch_size, total - start)
                noise = torch.randn((m, *x.shape), generator=gen, device=x.device, dtype=x.dtype)
                model(noise.mul_(sigma).add_(x))


def bench_overhead(
    model: nn.Module, xs: Tensor, args: argparse.Namespace, device: torch.device
) -> Pairs:
    """Interleaved (repeat, example) pairs of certify time and baseline time, timed back to
    back, the order alternating; the first round warms up and is not kept."""
    smooth = Smooth(model, 10, args.sigma, seed=0)

    def base(x: Tensor) -> None:
        baseline_forward_passes(model, x, args.sigma, args.n0, args.n, args.batch_size)

    def cert(x: Tensor) -> None:
        smooth.certify(x, args.n0, args.n, args.alpha, args.batch_size)

    pairs = Pairs()  # a: certify, b: baseline
    for rep in range(args.repeats + 1):  # the first round warms up
        kept = Pairs()
        for i, x in enumerate(xs):
            took = {
                what: timed(lambda fn=fn, x=x: fn(x), device)
                for what, fn in rotation([("base", base), ("cert", cert)], rep + i)
            }
            kept.a.append(took["cert"])
            kept.b.append(took["base"])
        if rep:
            pairs.a += kept.a
            pairs.b += kept.b
            total_base, total_cert = (sum(t.wall for t in ts) for ts in (kept.b, kept.a))
            print(f"  repeat {rep}: baseline {total_base:.3f} s, certify {total_cert:.3f} s")
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--quick", action="store_true", help="n=2000, 90 test examples")
    parser.add_argument("--sigma", type=float, default=0.25)
    parser.add_argument("--n0", type=int, default=100)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--alpha", type=float, default=0.001)
    parser.add_argument("--batch-size", type=int, default=1_000)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--skip", type=int, default=1, help="certify every skip-th test digit")
    parser.add_argument("--overhead-examples", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if args.quick:
        args.n, args.skip, args.repeats = 2_000, 4, 3
    set_threads(args.threads)
    device = torch.device(args.device)
    print_machine(device)

    x_train, y_train, x_test, y_test = sklearn_digits(0)
    t = time.perf_counter()
    model = train(x_train, y_train, args.sigma, args.epochs, device)
    print(
        f"trained SmallCNN (σ={args.sigma}, {args.epochs} epochs) "
        f"in {time.perf_counter() - t:.1f} s"
    )

    print(f"[1] overhead: certify vs {args.n0}+{args.n} noisy forward passes alone")
    xs = x_test[: args.overhead_examples].to(device)
    ratio = bench_overhead(model, xs, args, device).ratio("wall")
    print(
        f"  certify / forward passes, median [95% CI] of {ratio.n} pairs: {ratio}  "
        f"(target <= 1.05x) {ratio.verdict(1.05)}"
    )

    print(f"[2] sequential vs standard on {len(range(0, 360, args.skip))} test digits")
    data = (x_test, y_test)
    common = dict(
        n0=args.n0,
        n=args.n,
        alpha=args.alpha,
        batch_size=args.batch_size,
        skip=args.skip,
        progress=False,
    )
    standard = certify_dataset(Smooth(model, 10, args.sigma, seed=0), data, **common)
    acc = standard.certified_accuracy
    print(
        "  standard: certified accuracy "
        + ", ".join(f"r={r:g}: {100 * a:.1f}%" for r, a in acc.items())
        + f"; {standard.mean_samples:.0f} forward passes/example, {standard.seconds:.1f} s"
    )
    for r in (0.25, 0.5):
        seq = certify_dataset(
            Smooth(model, 10, args.sigma, seed=0), data, mode="sequential", radius=r, **common
        )
        diff = 100 * (seq.certified_accuracy[r] - acc[r])
        saving = standard.mean_samples / seq.mean_samples
        print(
            f"  sequential r={r:g}: {100 * seq.certified_accuracy[r]:.1f}% "
            f"(standard {100 * acc[r]:.1f}%, diff {diff:+.1f} points; target within 1), "
            f"{seq.mean_samples:.0f} forward passes/example = {saving:.1f}x fewer "
            f"(target >= 2x), {seq.seconds:.1f} s ({standard.seconds / seq.seconds:.1f}x faster)"
        )


if __name__ == "__main__":
    main()
