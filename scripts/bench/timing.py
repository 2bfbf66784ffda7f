"""The one way the benchmarks time things, summarise ratios and describe the machine.

Every benchmark compares a library code path with a baseline measured **in the same run**:

* :func:`timed` clocks one call in wall time (``time.perf_counter``) and process CPU time
  (``time.process_time``: waiting for a busy machine's cores does not inflate it), waiting for
  queued CUDA work before and after;
* :func:`interleaved_pairs` runs A and B in pairs, alternating which runs first (:func:`rotation`),
  after a warm-up, so that drift within a pair favours neither; :func:`rounds` does the same for
  more than two functions, rotating the order every round;
* :class:`RatioSummary` is the median of the per-pair ratios with a distribution-free 95%
  confidence interval for it (:func:`median_interval`: order statistics, no assumption on the
  distribution) and a verdict against a target (:meth:`RatioSummary.verdict`);
* :func:`step_quantile` is the steadier per-step estimate for a shared machine (the cost of the
  steps nothing disturbed);
* :func:`set_threads`, :func:`single_thread_env` pin torch / OpenMP threads; :func:`machine`
  describes the machine (CPU model, cores, load, torch version and threads, the CUDA card, the
  date) for the header of every benchmark's output; :func:`markdown_table` prints result rows
  as Markdown, ready for BENCHMARKS.md.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar

import torch
from scipy import stats as scipy_stats

T = TypeVar("T")

#: Below this many pairs no 95% interval for the median exists (the interval is the full range).
MIN_PAIRS = 6


# -- clocks ---------------------------------------------------------------------------------------
def is_cuda(device: torch.device | str | None) -> bool:
    """Whether ``device`` (a torch device, ``"cuda[:n]"``, or Lightning's ``"gpu"``) is CUDA."""
    if device is None:
        return False
    if isinstance(device, torch.device):
        return device.type == "cuda"
    return device == "gpu" or device.startswith("cuda")


def sync(device: torch.device | str | None = None) -> None:
    """Waits for queued CUDA work on ``device``, so that a clock read after it counts that work
    (nothing on the CPU)."""
    if is_cuda(device):
        torch.cuda.synchronize(None if device == "gpu" else device)


class Timed(NamedTuple):
    """What one timed call returned, and its wall and process CPU seconds."""

    value: Any
    wall: float
    cpu: float


def timed(fn: Callable[[], Any], device: torch.device | str | None = None) -> Timed:
    """Runs ``fn()`` once between two synchronised clock reads."""
    sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    value = fn()
    sync(device)
    return Timed(value, time.perf_counter() - wall, time.process_time() - cpu)


class Span:
    """Wall and process CPU seconds between :meth:`start` and :meth:`stop`, synchronised on
    ``device``; for spans that begin and end in different places (Lightning hooks)."""

    def __init__(self, device: torch.device | str | None = None) -> None:
        self.device = device
        self.wall = self.cpu = 0.0

    def start(self) -> None:
        sync(self.device)
        self.wall, self.cpu = -time.perf_counter(), -time.process_time()

    def stop(self) -> None:
        sync(self.device)
        self.wall += time.perf_counter()
        self.cpu += time.process_time()


# -- interleaving ---------------------------------------------------------------------------------
def rotation(items: Sequence[T], i: int) -> list[T]:
    """``items`` rotated by ``i`` places: round ``i``'s order. For two items, every other round
    reverses them, so drift within a pair favours neither side."""
    k = i % len(items) if items else 0
    return [*items[k:], *items[:k]]


@dataclass
class Pairs:
    """Interleaved A/B timings: one entry per pair for each side, in wall and CPU seconds."""

    a: list[Timed] = field(default_factory=list)
    b: list[Timed] = field(default_factory=list)

    def ratios(self, clock: str = "wall") -> list[float]:
        """Per-pair ratios A / B of ``clock`` (``"wall"`` or ``"cpu"``)."""
        return [getattr(x, clock) / getattr(y, clock) for x, y in zip(self.a, self.b, strict=True)]

    def ratio(self, clock: str = "wall") -> RatioSummary:
        """Median of the per-pair ratios A / B with its 95% interval."""
        return RatioSummary.of(self.ratios(clock))

    def median(self, side: str, clock: str = "wall") -> float:
        """Median seconds of side ``"a"`` or ``"b"``."""
        return statistics.median(getattr(t, clock) for t in getattr(self, side))


def interleaved_pairs(
    a: Callable[[], Any],
    b: Callable[[], Any],
    repeats: int,
    device: torch.device | str | None = None,
    warmup: int = 1,
) -> Pairs:
    """``repeats`` timed pairs of ``a()`` and ``b()``, alternating which runs first, after
    ``warmup`` untimed calls of each (imports, allocator, thread pools, kernel caches)."""
    for _ in range(warmup):
        a()
        b()
    pairs = Pairs()
    for i in range(repeats):
        took = {name: timed(fn, device) for name, fn in rotation([("a", a), ("b", b)], i)}
        pairs.a.append(took["a"])
        pairs.b.append(took["b"])
    return pairs


def rounds(
    fns: dict[str, Callable[[], Any]],
    repeats: int,
    device: torch.device | str | None = None,
    warmup: int = 1,
) -> dict[str, list[Timed]]:
    """``repeats`` rounds that each time every function once, the order rotated every round,
    after ``warmup`` untimed calls of each."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[Timed]] = {name: [] for name in fns}
    for i in range(repeats):
        for name in rotation(list(fns), i):
            times[name].append(timed(fns[name], device))
    return times


# -- statistics -----------------------------------------------------------------------------------
def median_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """The median of ``values`` and a distribution-free confidence interval for it.

    The interval is ``[v_(k), v_(n-k+1)]`` of the sorted values, with ``k`` the largest rank such
    that ``P(Binomial(n, 1/2) < k) <= (1 - level) / 2``; its coverage is at least ``level``
    whatever the distribution (Conover, "Practical Nonparametric Statistics", 3rd ed., §3.2).
    With fewer than 6 values no such ``k`` exists and the interval is the full range.
    """
    ordered = sorted(values)
    n = len(ordered)
    # the smallest k with P(B <= k) >= alpha / 2, so that P(B <= k - 1) < alpha / 2
    k = int(scipy_stats.binom.ppf((1 - level) / 2, n, 0.5))
    if k < 1:
        return statistics.median(ordered), ordered[0], ordered[-1]
    return statistics.median(ordered), ordered[k - 1], ordered[n - k]


def step_quantile(steps: Sequence[float], q: float = 0.1) -> float:
    """The ``q``-quantile of the steps' times: the cost of a step the machine did not disturb.

    Interference from other work on a shared machine only adds time, in bursts that slow some
    steps of a run and not others (the reasoning behind ``timeit``'s minimum); a low quantile
    rather than the minimum keeps one lucky step from deciding. Times the number of steps, it
    estimates a run's steps undisturbed.
    """
    if not steps:
        return float("nan")
    ordered = sorted(steps)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass(frozen=True)
class RatioSummary:
    """The median of per-pair ratios, its 95% interval and the number of pairs."""

    median: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, ratios: Sequence[float]) -> RatioSummary:
        if not ratios:
            nan = float("nan")
            return cls(nan, nan, nan, 0)
        return cls(*median_interval(ratios), n=len(ratios))

    def verdict(self, target: float = 1.05) -> str:
        """``ok``: the whole interval at or under ``target``; ``at the mark``: only the median;
        ``over``: the median above; ``few pairs``: under 6 pairs, where no 95% interval exists."""
        if self.n < MIN_PAIRS:
            return "few pairs"
        if self.high <= target:
            return "ok"
        return "at the mark" if self.median <= target else "over"

    def __str__(self) -> str:
        return f"{self.median:.3f} [{self.low:.3f}, {self.high:.3f}]"


# -- the run's settings and the machine -----------------------------------------------------------
def set_threads(threads: int | None) -> None:
    """Pins torch's intra-op threads (``None`` or 0: torch's default)."""
    if threads:
        torch.set_num_threads(threads)


def single_thread_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's) with one OpenMP / MKL thread and a fixed hash seed, for
    a child process whose work should not depend on the machine (callgrind)."""
    base = dict(os.environ if env is None else env)
    return {**base, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


def quiet_lightning() -> None:
    """Silences warnings and Lightning's info logging (they would interleave with the output)."""
    warnings.filterwarnings("ignore")
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else what ``platform`` says)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine(device: torch.device | str | None = None) -> str:
    """One line describing where and when a benchmark ran: CPU model, cores (usable by this
    process), load average, torch version and threads, Lightning's version where loaded, the
    CUDA card for a CUDA ``device``, Python and the date."""
    cores = os.cpu_count() or 0
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = cores
    parts = [f"{cpu_model()}, {cores} cores" + (f" ({usable} usable)" if usable != cores else "")]
    with contextlib.suppress(OSError):  # no load average on this platform
        parts[0] += f", load {os.getloadavg()[0]:.2f}"
    parts.append(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name in ("pytorch_lightning", "lightning"):
        if name in sys.modules:
            parts.append(f"{name} {getattr(sys.modules[name], '__version__', '?')}")
            break
    if is_cuda(device) and torch.cuda.is_available():
        parts.append(torch.cuda.get_device_name(None if device == "gpu" else device))
    parts.append(f"Python {platform.python_version()}")
    parts.append(datetime.date.today().isoformat())
    return "; ".join(parts)


def print_machine(device: torch.device | str | None = None) -> None:
    """Prints :func:`machine` as the first line of a benchmark's output."""
    print(f"machine: {machine(device)}", flush=True)


# -- Markdown -------------------------------------------------------------------------------------
def markdown_row(cells: Iterable[object]) -> str:
    """``| a | b | c |``."""
    return "| " + " | ".join(str(c) for c in cells) + " |"


def markdown_header(headers: Sequence[str]) -> str:
    """The header row and the separator row of a Markdown table."""
    return markdown_row(headers) + "\n" + markdown_row("---" for _ in headers).replace(" ", "")


def markdown_table(headers: Sequence[str], rows: Iterable[Iterable[object]]) -> str:
    """A Markdown table of ``rows`` under ``headers``."""
    return "\n".join([markdown_header(headers), *(markdown_row(r) for r in rows)])
