"""Benchmark of bound propagation: IBP against a forward pass, CROWN time and peak memory.

Measures, on a SmallCNN for 3×32×32 inputs (conv 16 → conv 32 stride 2 → linear 128 → 10):

1. ``IBP / forward``: :func:`advtrain.certify.interval_bounds` (with margins) against one plain
   ``model(x)`` at batch 128, both without autograd, interleaved repeats (each round times every
   function once, in an order that rotates: :func:`timing.rounds`), the ratio of the medians
   (target <= 2.5x) and the median of the per-round ratios with its 95% interval. Also the
   training-step ratio: ``IBPLoss`` forward+backward against a clean cross-entropy step.
2. CROWN (full, intermediate bounds by CROWN) and CROWN-IBP at batch 8: median time and peak
   memory: growth of the resident set size during the first call, sampled every millisecond
   in a fresh subprocess (and ``torch.cuda.max_memory_allocated`` on CUDA).

Usage (from the repository root)::

    python -m scripts.bench.bounds [--device cpu|cuda] [--repeats 7] [--threads N] [--skip-crown]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import statistics
import sys
import threading
import time
from typing import Any

import torch
import torch.nn.functional as F

from advtrain.certify import crown_bounds, interval_bounds
from advtrain.losses import IBPLoss
from advtrain.models import SmallCNN

from .timing import RatioSummary, print_machine, rounds, set_threads, timed


def _model(device: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return SmallCNN((3, 32, 32), 10, width=16, hidden=128).to(device).eval()


def bench_ibp(device: str, repeats: int, batch: int = 128) -> dict[str, Any]:
    model = _model(device)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, 32, 32, generator=gen).to(device)
    y = torch.randint(0, 10, (batch,), generator=gen).to(device)
    eps = 2 / 255

    def forward() -> None:
        with torch.no_grad():
            model(x)

    def ibp() -> None:
        with torch.no_grad():
            interval_bounds(model, x, eps, labels=y)

    loss_fn = IBPLoss(eps=eps, kappa=0.5)
    model_t = _model(device).train()

    def clean_step() -> None:
        F.cross_entropy(model_t(x), y).backward()

    def ibp_step() -> None:
        loss, _ = loss_fn(model_t, x, y)
        loss.backward()

    times = rounds(
        {"forward": forward, "ibp": ibp, "clean_step": clean_step, "ibp_step": ibp_step},
        repeats,
        device,
    )
    med = {name: statistics.median(t.wall for t in ts) for name, ts in times.items()}

    def ratio(a: str, b: str) -> RatioSummary:
        """Per-round ratios a / b (the two ran in the same round)."""
        return RatioSummary.of([x.wall / y.wall for x, y in zip(times[a], times[b], strict=True)])

    return {
        "forward_ms": 1e3 * med["forward"],
        "ibp_ms": 1e3 * med["ibp"],
        "ibp_over_forward": med["ibp"] / med["forward"],
        "ibp_over_forward_per_round": str(ratio("ibp", "forward")),
        "clean_step_ms": 1e3 * med["clean_step"],
        "ibp_step_ms": 1e3 * med["ibp_step"],
        "ibp_step_over_clean_step": med["ibp_step"] / med["clean_step"],
        "ibp_step_over_clean_step_per_round": str(ratio("ibp_step", "clean_step")),
    }


def _crown_worker(device: str, method: str, repeats: int, batch: int, out: Any) -> None:
    model = _model(device)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, 32, 32, generator=gen).to(device)
    y = torch.randint(0, 10, (batch,), generator=gen).to(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base_cuda = torch.cuda.memory_allocated()

    def run() -> None:
        with torch.no_grad():
            crown_bounds(model, x, 2 / 255, labels=y, intermediate=method)

    # The first call (tracing, lowering, the largest buffers) sets the peak; then time it.
    sampler = _RssSampler()
    with sampler:
        first = timed(run, device).wall
    result = {"first_call_s": first, "peak_rss_growth_mib": sampler.growth_mib}
    if device == "cuda":
        result["peak_cuda_mib"] = (torch.cuda.max_memory_allocated() - base_cuda) / 2**20
    result["median_s"] = statistics.median([timed(run, device).wall for _ in range(repeats)])
    out.put(result)


class _RssSampler:
    """Peak growth of the resident set size during a block, sampled every millisecond.

    Large tensors are allocated with ``mmap`` and returned on free, so they show up as RSS growth
    while alive (Linux ``/proc/self/statm``; elsewhere the process's ``ru_maxrss`` is used).
    """

    def __init__(self) -> None:
        self.peak = 0
        self.base = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    @staticmethod
    def _rss() -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * resource.getpagesize()
        except OSError:
            scale = 1 if sys.platform == "darwin" else 1024
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(0.001)

    def __enter__(self) -> _RssSampler:
        self.base = self.peak = self._rss()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def growth_mib(self) -> float:
        return (self.peak - self.base) / 2**20


def bench_crown(device: str, repeats: int, batch: int = 8) -> dict[str, dict[str, float]]:
    ctx = mp.get_context("spawn")
    results = {}
    for method in ("crown", "ibp"):
        queue = ctx.Queue()
        proc = ctx.Process(target=_crown_worker, args=(device, method, repeats, batch, queue))
        proc.start()
        results["crown" if method == "crown" else "crown_ibp"] = queue.get()
        proc.join()
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--crown-repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--skip-crown", action="store_true", help="only the IBP measurements")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    print_machine(args.device)
    report: dict[str, Any] = {
        "device": args.device,
        "threads": torch.get_num_threads(),
        "ibp_batch128": bench_ibp(args.device, args.repeats),
    }
    if not args.skip_crown:
        report["crown_batch8"] = bench_crown(args.device, args.crown_repeats)
    print(json.dumps(report, indent=2))
    ibp = report["ibp_batch128"]
    ratio = ibp["ibp_over_forward"]
    print(
        f"IBP / forward = {ratio:.2f}x (per round: {ibp['ibp_over_forward_per_round']}; "
        f"target <= 2.5x): {'OK' if ratio <= 2.5 else 'ABOVE'}"
    )
    return report


if __name__ == "__main__":
    main()
