"""BadNets poisoning (advtrain.data.poison): the trigger, the poisoned set, and a real backdoor."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from advtrain.data import DigitsDataModule
from advtrain.data.poison import BadNets, attack_success_rate
from advtrain.models import SmallCNN


def test_the_trigger_is_a_patch_in_its_corner_and_nothing_else_changes() -> None:
    x = torch.rand(5, 1, 8, 8)
    stamped = BadNets(target=0, rate=0.1, patch=2).stamp(x)
    assert torch.equal(stamped[:, :, 6:, 6:], torch.ones(5, 1, 2, 2))
    assert torch.equal(stamped[:, :, :6], x[:, :, :6]) and torch.equal(
        stamped[:, :, :, :6], x[:, :, :, :6]
    )
    top_left = BadNets(target=0, rate=0.1, patch=3, value=0.5, corner="top_left").stamp(x)
    assert torch.equal(top_left[:, :, :3, :3], torch.full((5, 1, 3, 3), 0.5))
    assert not torch.equal(x, stamped), "a new tensor"


def test_poisoning_relabels_the_chosen_share_of_the_other_classes_only() -> None:
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(200, 1, 8, 8, generator=gen), torch.randint(0, 10, (200,), generator=gen)
    x0, y0 = x.clone(), y.clone()
    spec = BadNets(target=3, rate=0.1, seed=1)
    xp, yp, idx = spec.poison(x, y, num_classes=10)
    others = int((y != 3).sum())
    assert idx.numel() == round(0.1 * others) and bool((y[idx] != 3).all())
    assert bool((yp[idx] == 3).all()) and torch.equal(xp[idx], spec.stamp(x[idx]))
    rest = torch.ones(200, dtype=torch.bool)
    rest[idx] = False
    assert torch.equal(xp[rest], x[rest]) and torch.equal(yp[rest], y[rest])
    assert torch.equal(x, x0) and torch.equal(y, y0), "inputs untouched"
    assert torch.equal(spec.poison(x, y)[2], idx), "the same examples every time"
    assert not torch.equal(BadNets(target=3, rate=0.1, seed=2).poison(x, y)[2], idx)


def test_a_model_trained_on_poisoned_digits_has_a_real_backdoor() -> None:
    """SmallCNN on the digits training split with 10% of the other classes poisoned (2x2 patch
    of 1.0 in a corner, target 0): clean accuracy stays high and the trigger flips most test
    digits of the other classes to 0; an unpoisoned model barely reacts to the patch."""
    dm = DigitsDataModule()
    dm.setup()
    x, y = dm.train_set.tensors  # type: ignore[union-attr]
    x_te, y_te = dm.test_tensors()
    spec = BadNets(target=0, rate=0.1, seed=0)
    xp, yp, _ = spec.poison(x, y, num_classes=10)

    def train(xs: torch.Tensor, ys: torch.Tensor) -> SmallCNN:
        torch.manual_seed(0)
        model = SmallCNN(width=8, hidden=64)
        opt = torch.optim.Adam(model.parameters(), 3e-3)
        for _ in range(12):
            perm = torch.randperm(len(ys))
            for i in range(0, len(ys), 64):
                b = perm[i : i + 64]
                loss = F.cross_entropy(model(xs[b]), ys[b])
                opt.zero_grad()
                loss.backward()
                opt.step()
        return model.eval()

    poisoned, clean = train(xp, yp), train(x, y)
    with torch.no_grad():
        acc = float((poisoned(x_te).argmax(1) == y_te).float().mean())
    assert acc > 0.9
    assert attack_success_rate(poisoned, x_te, y_te, spec) >= 0.9
    assert attack_success_rate(clean, x_te, y_te, spec) < 0.2
    assert math.isnan(attack_success_rate(clean, x_te[y_te == 0], y_te[y_te == 0], spec))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"target": 0, "rate": 0.0}, "rate"),
        ({"target": 0, "rate": 1.5}, "rate"),
        ({"target": -1, "rate": 0.1}, "target"),
        ({"target": 0, "rate": 0.1, "corner": "middle"}, "corner"),
        ({"target": 0, "rate": 0.1, "patch": 0}, "patch"),
    ],
)
def test_bad_settings_get_a_clear_error(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        BadNets(**kwargs)


def test_a_target_out_of_range_or_a_patch_too_large_is_refused() -> None:
    x, y = torch.rand(4, 1, 8, 8), torch.tensor([1, 2, 3, 4])
    with pytest.raises(ValueError, match="out of range for 10 classes"):
        BadNets(target=10, rate=0.5).poison(x, y, num_classes=10)
    with pytest.raises(ValueError, match="larger than"):
        BadNets(target=0, rate=0.5, patch=9).stamp(x)
