"""SyntheticDataModule: any shape, seeded, balanced, in [0, 1], learnable, validated."""

from __future__ import annotations

import pytest
import torch
from sklearn.linear_model import LogisticRegression

from advtrain.data import EpochSeededSampler, SyntheticDataModule, make_synthetic, tensors_sha256


def _module(**kwargs: object) -> SyntheticDataModule:
    dm = SyntheticDataModule(**kwargs)  # type: ignore[arg-type]
    dm.setup("fit")
    return dm


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32), (2, 5, 7)])
def test_shape_dtype_range_and_balance(shape: tuple[int, int, int]) -> None:
    x, y = make_synthetic(103, shape, num_classes=10, seed=0)
    assert x.shape == (103, *shape) and x.dtype == torch.float32
    assert y.shape == (103,) and y.dtype == torch.long
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    counts = torch.bincount(y, minlength=10)
    assert counts.min() == 10 and counts.max() == 11  # 103 = 10·10 + 3


def test_same_seed_same_data_other_seed_other_data() -> None:
    a = make_synthetic(64, (3, 32, 32), seed=1)
    b = make_synthetic(64, (3, 32, 32), seed=1)
    c = make_synthetic(64, (3, 32, 32), seed=2)
    assert tensors_sha256(*a) == tensors_sha256(*b)
    assert not torch.equal(a[0], c[0])


def test_module_splits_sizes_shape_and_metadata() -> None:
    dm = _module(input_shape=[3, 32, 32], num_classes=5, size=200, split=[0.7, 0.1, 0.2])
    assert dm.input_shape == (3, 32, 32) and dm.num_classes == 5 and dm.name == "synthetic"
    assert [len(s) for s in (dm.train_set, dm.val_set, dm.test_set)] == [140, 20, 40]  # type: ignore[arg-type]
    x, y = dm.test_tensors()
    assert x.shape == (40, 3, 32, 32) and int(y.max()) < 5
    assert len(dm.test_tensors(7)[1]) == 7


def test_run_seed_changes_the_shuffle_not_the_data() -> None:
    a = _module(size=100, seed=0, batch_size=10)
    b = _module(size=100, seed=1, batch_size=10)
    assert tensors_sha256(*a.test_tensors()) == tensors_sha256(*b.test_tensors())
    loader_a, loader_b = a.train_dataloader(), b.train_dataloader()
    assert isinstance(loader_a.sampler, EpochSeededSampler)
    assert not torch.equal(next(iter(loader_a))[1], next(iter(loader_b))[1])
    c = _module(size=100, data_seed=3)
    assert tensors_sha256(*a.test_tensors()) != tensors_sha256(*c.test_tensors())


def _linear_accuracy(noise: float) -> float:
    dm = _module(input_shape=(1, 8, 8), size=1000, noise=noise, data_seed=0)
    xtr, ytr = dm.train_set.tensors  # type: ignore[union-attr]
    xte, yte = dm.test_tensors()
    clf = LogisticRegression(max_iter=300).fit(xtr.flatten(1).numpy(), ytr.numpy())
    return float(clf.score(xte.flatten(1).numpy(), yte.numpy()))


def test_learnable_and_noise_sets_the_difficulty() -> None:
    easy = _linear_accuracy(0.3)
    hard = _linear_accuracy(1.5)
    assert easy >= 0.7, easy  # measured 0.87 (chance: 0.1)
    assert hard < easy - 0.2, (hard, easy)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"input_shape": (3, 32)}, ValueError, "channels, height, width"),
        ({"input_shape": "3x32x32"}, TypeError, "channels, height, width"),
        ({"input_shape": (3, 0, 32)}, ValueError, ">= 1"),
        ({"num_classes": 1}, ValueError, ">= 2"),
        ({"split": (0.5, 0.5, 0.5)}, ValueError, "summing to 1"),
        ({"split": (0.9, 0.1, 0.0)}, ValueError, "test > 0"),
        ({"size": 1}, ValueError, "increase size"),
        ({"noise": -0.1}, ValueError, "noise"),
    ],
)
def test_bad_arguments_say_what_to_change(
    kwargs: dict[str, object], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        SyntheticDataModule(**kwargs)  # type: ignore[arg-type]
