"""DigitsDataModule: split sizes, stratification, seeding, shuffling, untouched tensors."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch

from advtrain.attacks import PGD
from advtrain.callbacks import AdversarialTraining
from advtrain.data import DigitsDataModule, EpochSeededSampler, load_digits_tensors, tensors_sha256
from advtrain.data.digits import stratified_split
from advtrain.lit import AdversarialClassifier
from advtrain.models import SmallCNN


def _setup(**kwargs: object) -> DigitsDataModule:
    dm = DigitsDataModule(**kwargs)  # type: ignore[arg-type]
    dm.setup("fit")
    return dm


def _tensors(dm: DigitsDataModule, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    ds = getattr(dm, f"{split}_set")
    return ds.tensors[0], ds.tensors[1]


def test_split_sizes_are_1257_180_360() -> None:
    dm = _setup()
    sizes = [len(_tensors(dm, s)[1]) for s in ("train", "val", "test")]
    assert sizes == [1257, 180, 360]
    assert len(dm.test_tensors()[1]) == 360
    assert len(dm.test_tensors(50)[1]) == 50


def test_values_in_unit_interval_with_all_ten_classes() -> None:
    x, y = load_digits_tensors()
    assert x.shape == (1797, 1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.long
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert sorted(y.unique().tolist()) == list(range(10))


def test_splits_are_disjoint_and_cover_the_data_set() -> None:
    _, y = load_digits_tensors()
    train, val, test = stratified_split(y, (0.7, 0.1, 0.2), seed=0)
    everything = torch.cat([train, val, test])
    assert len(everything) == 1797 and sorted(everything.tolist()) == list(range(1797))
    x_all, y_all = load_digits_tensors()
    dm = _setup()
    assert torch.equal(_tensors(dm, "test")[0], x_all[test])
    assert torch.equal(_tensors(dm, "train")[1], y_all[train])


def test_split_is_stratified() -> None:
    dm = _setup()
    _, y_all = load_digits_tensors()
    overall = torch.bincount(y_all, minlength=10).double() / len(y_all)
    for split, n in (("train", 1257), ("val", 180), ("test", 360)):
        counts = torch.bincount(_tensors(dm, split)[1], minlength=10).double()
        # A stratified split puts round(n * p_c) examples of class c in the split, +-1.
        assert (counts - n * overall).abs().max() <= 1.0 + 1e-9, split


def test_split_is_seeded_and_independent_of_run_seed_and_global_rng() -> None:
    torch.manual_seed(123)
    a = _setup(seed=0)
    torch.manual_seed(456)
    b = _setup(seed=7)  # another training-shuffle seed: the same split
    for split in ("train", "val", "test"):
        assert tensors_sha256(*_tensors(a, split)) == tensors_sha256(*_tensors(b, split))
    c = _setup(split_seed=1)
    assert tensors_sha256(*_tensors(a, "test")) != tensors_sha256(*_tensors(c, "test"))


def test_sampler_order_depends_on_seed_and_epoch_only() -> None:
    data = list(range(100))

    def order(seed: int, epoch: int) -> list[int]:
        sampler = EpochSeededSampler(data, seed=seed)
        sampler.set_epoch(epoch)
        torch.manual_seed(seed * 1000 + epoch + 17)  # the global RNG must not matter
        return list(sampler)

    assert order(0, 3) == order(0, 3)
    assert sorted(order(0, 3)) == data
    assert order(0, 3) != order(0, 4)
    assert order(0, 3) != order(1, 3)
    # A resumed run re-creates the sampler: the order of epoch e is the same.
    fresh = EpochSeededSampler(data, seed=0)
    fresh.set_epoch(3)
    assert list(fresh) == order(0, 3)


def test_train_loader_uses_the_epoch_seeded_sampler() -> None:
    dm = _setup(seed=5, batch_size=32)
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, EpochSeededSampler) and loader.sampler.seed == 5
    first = next(iter(loader))[1]
    again = next(iter(_setup(seed=5, batch_size=32).train_dataloader()))[1]
    other = next(iter(_setup(seed=6, batch_size=32).train_dataloader()))[1]
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_bad_split_is_refused_with_a_clear_message() -> None:
    with pytest.raises(ValueError, match="sum to 1"):
        _setup(split=(0.5, 0.1, 0.1))


def test_adversarial_training_run_leaves_the_data_tensors_untouched(tmp_path: object) -> None:
    pl.seed_everything(0, verbose=False)
    dm = _setup(batch_size=64)
    before = {s: tensors_sha256(*_tensors(dm, s)) for s in ("train", "val", "test")}
    x_test = dm.test_tensors()[0]
    module = AdversarialClassifier(SmallCNN(width=8, hidden=32), num_classes=10, lr=1e-2)
    callback = AdversarialTraining(PGD(eps=0.2, steps=2, seed=0))
    trainer = pl.Trainer(
        max_epochs=1,
        limit_train_batches=3,
        limit_val_batches=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[callback],
        default_root_dir=str(tmp_path),
    )
    params = [p.detach().clone() for p in module.parameters()]
    trainer.fit(module, datamodule=dm)
    assert any(not torch.equal(p, q) for p, q in zip(params, module.parameters(), strict=True))
    after = {s: tensors_sha256(*_tensors(dm, s)) for s in ("train", "val", "test")}
    assert after == before
    assert torch.equal(dm.test_tensors()[0], x_test)
    for split in ("train", "val", "test"):
        x, _ = _tensors(dm, split)
        assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
