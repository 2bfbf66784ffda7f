"""An attack call's input checks read inputs and labels in one host sync, and its reseeding keeps
its generators: both run every training step, so both must cost little and change nothing."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from advtrain.attacks import APGD, FGSM, PGD
from advtrain.models import SmallCNN
from advtrain.threat import check_input_batch


class CountOps(TorchDispatchMode):
    """Counts the aten operators dispatched inside the block, by name."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        name = func.overloadpacket.__name__
        self.counts[name] = self.counts.get(name, 0) + 1
        return func(*args, **(kwargs or {}))


def test_check_input_batch_returns_the_labels_range_exactly() -> None:
    x = torch.rand(3, 1, 8, 8)
    assert check_input_batch(x, (0.0, 1.0)) is None
    assert check_input_batch(x, (0.0, 1.0), labels=torch.tensor([4, 0, 9])) == (0, 9)
    big = 2**40 + 1  # exact through float64, which carries the labels' extrema
    assert check_input_batch(x, (0.0, 1.0), labels=torch.tensor([big, -3, 2])) == (-3, big)
    with pytest.raises(ValueError, match="NaN"):
        check_input_batch(x.masked_fill(x > 0.5, float("nan")), (0, 1), labels=torch.tensor([1]))


def test_one_reduction_per_tensor_and_labels_checked_against_the_classes() -> None:
    model = SmallCNN().eval()
    x, y = torch.rand(8, 1, 8, 8), torch.arange(8)
    attack = FGSM(eps=0.1, random_start=True, seed=0)
    with CountOps() as ops:
        attack(model, x, y)
    # the inputs' and the labels' extrema: one aminmax each, read together (one .tolist())
    assert ops.counts.get("aminmax") == 2, ops.counts
    assert ops.counts.get("cat") == 1, ops.counts
    with pytest.raises(ValueError, match=r"lie in \[0, 10\) .* got values in \[0, 12\]"):
        attack(model, x, torch.tensor([0, 1, 2, 3, 4, 5, 6, 12]))
    with pytest.raises(ValueError, match=r"got values in \[-1, 7\]"):
        PGD(eps=0.1, steps=1)(model, x, torch.tensor([-1, 1, 2, 3, 4, 5, 6, 7]))


def test_a_range_from_an_earlier_call_does_not_vouch_for_other_labels() -> None:
    model = SmallCNN().eval()
    x = torch.rand(4, 1, 8, 8)
    attack = PGD(eps=0.1, steps=1)
    attack(model, x, torch.tensor([0, 1, 2, 3]))
    # perturb called directly (no validate): its labels are read, not the last call's range
    with pytest.raises(ValueError, match=r"got values in \[0, 11\]"):
        attack.perturb(model, x, torch.tensor([0, 1, 2, 11]))
    # a failed call leaves nothing behind either
    with pytest.raises(ValueError, match="outside bounds"):
        attack(model, x * 3, torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match=r"got values in \[0, 10\]"):
        attack.perturb(model, x, torch.tensor([0, 1, 2, 10]))


def test_reseed_keeps_its_generators_and_restarts_their_streams() -> None:
    x = torch.rand(5, 1, 8, 8)
    attack = PGD(eps=0.1, steps=1, seed=3)
    gen = attack.generator(x.device)
    first = attack.threat.random_start(x, gen)
    attack.threat.random_start(x, gen)  # move the stream on
    attack.reseed(3)
    assert attack.generator(x.device) is gen
    assert torch.equal(attack.threat.random_start(x, gen), first)
    attack.reseed(4)
    fresh = PGD(eps=0.1, steps=1, seed=4)
    assert torch.equal(
        attack.threat.random_start(x, attack.generator(x.device)),
        fresh.threat.random_start(x, fresh.generator(x.device)),
    )
    attack.reseed(None)  # unseeded: the global RNG
    assert attack.generator(x.device) is None


def test_apgd_state_after_reseed_matches_a_fresh_attack() -> None:
    model = SmallCNN().eval()
    x, y = torch.rand(6, 1, 8, 8), torch.arange(6)
    used = APGD(eps=0.1, steps=3, seed=0)
    used(model, x, y)
    used.reseed(7)
    fresh = APGD(eps=0.1, steps=3, seed=7)
    assert torch.equal(used(model, x, y), fresh(model, x, y))
