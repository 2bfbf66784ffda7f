"""CertifiedAccuracy (torchmetrics, DDP-synced) and its functional twin certified_accuracy."""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hypothesis import given, settings
from hypothesis import strategies as st

from advtrain.metrics import CertifiedAccuracy, certified_accuracy

PRED = torch.tensor([0, 1, -1, 2, 1, 0])
RADII = torch.tensor([0.30, 0.50, 0.00, 0.10, 0.75, 0.25])
TARGET = torch.tensor([0, 1, 2, 0, 1, 0])
# correct and non-abstaining: indices 0 (0.30), 1 (0.50), 4 (0.75), 5 (0.25)


def test_functional_counts_correct_examples_at_or_beyond_the_radius() -> None:
    assert certified_accuracy(PRED, RADII, TARGET, 0.0).item() == pytest.approx(4 / 6)
    assert certified_accuracy(PRED, RADII, TARGET, 0.25).item() == pytest.approx(4 / 6)  # >=
    assert certified_accuracy(PRED, RADII, TARGET, 0.3).item() == pytest.approx(3 / 6)
    assert certified_accuracy(PRED, RADII, TARGET, 0.6).item() == pytest.approx(1 / 6)
    assert certified_accuracy(PRED, RADII, TARGET, 1.0).item() == 0.0
    vec = certified_accuracy(PRED, RADII, TARGET, (0.0, 0.5, 1.0))
    assert vec.shape == (3,)
    assert vec.tolist() == pytest.approx([4 / 6, 2 / 6, 0.0])


def test_abstentions_never_count_even_with_label_minus_one_or_radius() -> None:
    pred = torch.tensor([-1, -1])
    target = torch.tensor([-1, 0])
    assert certified_accuracy(pred, torch.tensor([0.5, 0.5]), target, 0.0).item() == 0.0


def test_metric_accumulates_batches_like_the_functional() -> None:
    metric = CertifiedAccuracy(radii=(0.0, 0.25, 0.5, 0.75, 1.0))
    metric.update(PRED[:4], RADII[:4], TARGET[:4])
    metric.update(PRED[4:], RADII[4:], TARGET[4:])
    expected = certified_accuracy(PRED, RADII, TARGET, (0.0, 0.25, 0.5, 0.75, 1.0))
    assert torch.allclose(metric.compute(), expected)
    logged = metric.as_dict()
    assert list(logged) == [f"certified_acc@{r:g}" for r in (0, 0.25, 0.5, 0.75, 1)]
    assert logged["certified_acc@0.5"].item() == pytest.approx(2 / 6)
    metric.reset()
    metric.update(PRED[:2], RADII[:2], TARGET[:2])
    assert metric.compute()[0].item() == 1.0


def test_single_radius_gives_a_scalar() -> None:
    metric = CertifiedAccuracy(radii=0.5)
    metric.update(PRED, RADII, TARGET)
    out = metric.compute()
    assert out.dim() == 0 and out.item() == pytest.approx(2 / 6)


def test_empty_metric_is_nan() -> None:
    metric = CertifiedAccuracy(radii=(0.0, 0.5))
    with pytest.warns(UserWarning):
        out = metric.compute()
    assert all(math.isnan(v) for v in out.tolist())
    empty = torch.tensor([], dtype=torch.long)
    assert math.isnan(certified_accuracy(empty, torch.tensor([]), empty, 0.0).item())


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        ((PRED.float(), RADII, TARGET), TypeError, "integer"),
        ((PRED, RADII.long(), TARGET), TypeError, "floating"),
        ((PRED, RADII, TARGET[:3]), ValueError, "same length"),
        ((PRED.view(2, 3), RADII, TARGET), ValueError, "one-dimensional"),
        ((PRED, torch.full((6,), math.nan), TARGET), ValueError, "NaN"),
        ((PRED.tolist(), RADII, TARGET), TypeError, "Tensor"),
    ],
)
def test_bad_inputs_raise(args: tuple, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        certified_accuracy(*args)
    with pytest.raises(error, match=match):
        CertifiedAccuracy().update(*args)


@pytest.mark.parametrize(
    ("radii", "error"), [((), ValueError), ((-0.1,), ValueError), ("a", TypeError)]
)
def test_bad_radii_raise(radii: object, error: type) -> None:
    with pytest.raises(error, match="radii"):
        CertifiedAccuracy(radii=radii)  # type: ignore[arg-type]


@settings(max_examples=50, deadline=None)
@given(
    data=st.lists(
        st.tuples(st.integers(-1, 3), st.floats(0, 2, allow_nan=False), st.integers(0, 3)),
        min_size=1,
        max_size=40,
    ),
    radii=st.lists(st.floats(0, 2, allow_nan=False), min_size=1, max_size=6),
)
def test_property_bounded_and_non_increasing_in_radius(data: list, radii: list) -> None:
    pred = torch.tensor([d[0] for d in data])
    rad = torch.tensor([d[1] for d in data], dtype=torch.float64)
    target = torch.tensor([d[2] for d in data])
    ordered = sorted(radii)
    acc = certified_accuracy(pred, rad, target, ordered)
    assert bool(((acc >= 0) & (acc <= 1)).all())
    assert bool((acc[1:] <= acc[:-1] + 1e-12).all())
    brute = [
        sum(int(p == t and p >= 0 and r >= at) for p, r, t in data) / len(data) for at in ordered
    ]
    assert acc.tolist() == pytest.approx(brute)


# -- DDP: counts are summed across processes ------------------------------------------------------
def _worker(rank: int, world: int, port: int, queue: mp.Queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        metric = CertifiedAccuracy(radii=(0.0, 0.5))
        part = slice(0, 2) if rank == 0 else slice(2, 6)  # unequal parts: local != global
        metric.update(PRED[part], RADII[part], TARGET[part])
        queue.put((rank, metric.compute().tolist()))
    finally:
        dist.destroy_process_group()


@pytest.mark.ddp
def test_metric_syncs_across_two_processes() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(r, 2, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert all(p.exitcode == 0 for p in procs)
    results = dict(queue.get(timeout=5) for _ in range(2))
    expected = certified_accuracy(PRED, RADII, TARGET, (0.0, 0.5)).tolist()
    for rank in (0, 1):
        assert results[rank] == pytest.approx(expected)  # the whole data set's, on each rank
