"""DataProvenance on outside-style code: the template's DataModule (ToTensor + Normalize,
ConcatDataset + random_split), ``lightning`` imports, a real Trainer with checkpoints."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import Dataset

from advtrain.callbacks import DataProvenance
from advtrain.provenance import Manifest, manifest_of

from .outside.template_project import DigitsDataModule, DigitsLitModule, SimpleDenseNet
from .test_callback_helpers import one_thread, trainer  # noqa: F401  (autouse fixture)


def _fit(root: Path, dm: Any, ckpt_path: str | None = None, epochs: int = 1) -> DataProvenance:
    L.seed_everything(0, verbose=False)
    provenance = DataProvenance(name="digits")
    checkpoint = ModelCheckpoint(dirpath=root / "checkpoints", filename="last")
    fit = trainer(
        [provenance, checkpoint],
        package=L,
        max_epochs=epochs,
        limit_train_batches=2,
        enable_checkpointing=True,
    )
    # The template pickles its net into the hyper-parameters: its own checkpoint, resumed by its
    # owner, loads with weights_only=False (Lightning's default refuses the pickled class).
    module = DigitsLitModule(net=SimpleDenseNet())
    fit.fit(module, datamodule=dm, ckpt_path=ckpt_path, weights_only=False if ckpt_path else None)
    return provenance


def test_the_manifest_names_the_training_split_and_goes_next_to_the_checkpoint(
    tmp_path: Path,
) -> None:
    dm = DigitsDataModule(batch_size=64)
    provenance = _fit(tmp_path / "a", dm)
    written = Manifest.load(tmp_path / "a" / "checkpoints" / "data_manifest.json")
    dm.setup()
    expected = manifest_of(dm.data_train)  # the random_split subset, normalised tensors
    assert written.root == expected.root == provenance.manifest.root  # type: ignore[union-attr]
    assert written.size == 1257 and sum(written.class_counts.values()) == 1257
    state = torch.load(tmp_path / "a" / "checkpoints" / "last.ckpt", weights_only=False)
    saved = next(v for k, v in state["callbacks"].items() if k.startswith("DataProvenance"))
    assert saved["merkle_root"] == written.root and saved["hashes"].shape == (1257, 32)
    # A second run on the same data: the same manifest.
    again = _fit(tmp_path / "b", DigitsDataModule(batch_size=64))
    assert again.manifest.hashes == written.hashes  # type: ignore[union-attr]


class _Mapped(Dataset):
    """``inner`` with ``change(i, x)`` applied to each input as it is read."""

    def __init__(self, inner: Any, change: Callable[[int, torch.Tensor], torch.Tensor]) -> None:
        self.inner, self.change = inner, change

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i: int) -> Any:
        x, y = self.inner[i]
        return self.change(i, x), y


def _changed_train_split(change: Callable[[int, torch.Tensor], torch.Tensor]) -> DigitsDataModule:
    """The template's data module whose training split reads through ``change``."""

    class Changed(DigitsDataModule):
        def setup(self, stage: str | None = None) -> None:
            super().setup(stage)
            self.data_train = _Mapped(self.data_train, change)

    return Changed(batch_size=64)


def _one_pixel_off(i: int, x: torch.Tensor) -> torch.Tensor:
    if i != 5:
        return x
    x = x.clone()
    x[0, 0, 0] += 1.0
    return x


def test_resuming_on_other_data_is_refused_with_the_differing_count(tmp_path: Path) -> None:
    _fit(tmp_path, DigitsDataModule(batch_size=64))
    last = str(tmp_path / "checkpoints" / "last.ckpt")
    with pytest.raises(L.utilities.exceptions.MisconfigurationException) as info:
        _fit(tmp_path, _changed_train_split(_one_pixel_off), ckpt_path=last, epochs=2)
    assert "1 examples differ (1 changed" in str(info.value)
    # The same data resumes.
    _fit(tmp_path, DigitsDataModule(batch_size=64), ckpt_path=last, epochs=2)


def test_random_augmentations_get_a_clear_error(tmp_path: Path) -> None:
    noisy = _changed_train_split(lambda _, x: x + 0.01 * torch.randn_like(x))
    with pytest.raises(L.utilities.exceptions.MisconfigurationException, match="dataset="):
        _fit(tmp_path, noisy)


def test_verify_data_locates_a_flipped_pixel_and_a_dropped_example(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """advtrain-eval verify-data against manifests of the digits training split: the real one,
    one written from the split with a pixel flipped in example 3, one without example 10."""
    from torch.utils.data import TensorDataset

    from advtrain.cli.evaluate import main
    from advtrain.data import DigitsDataModule

    dm = DigitsDataModule()
    dm.setup()
    x, y = dm.train_set.tensors  # type: ignore[union-attr]
    manifest_of(dm.train_set).save(tmp_path / "same.json")
    flipped = x.clone()
    flipped[3, 0, 4, 4] = 1.0 - flipped[3, 0, 4, 4]
    manifest_of(TensorDataset(flipped, y)).save(tmp_path / "flipped.json")
    keep = [i for i in range(len(y)) if i != 10]
    manifest_of(TensorDataset(x[keep], y[keep])).save(tmp_path / "dropped.json")

    def verify(name: str) -> tuple[int, str]:
        with pytest.raises(SystemExit) as exit_info:
            main(["verify-data", str(tmp_path / name), "data=digits"])
        captured = capsys.readouterr()
        return int(exit_info.value.code or 0), captured.out + captured.err

    code, text = verify("same.json")
    assert code == 0 and "identical: 1257 examples" in text
    code, text = verify("flipped.json")
    assert code == 1 and "1 changed, 0 removed, 0 added" in text and "changed  #3:" in text
    code, text = verify("dropped.json")
    assert code == 1 and "0 removed, 1 added" in text and "added    #10 of the data" in text
    (tmp_path / "bad.json").write_text("{}")
    code, text = verify("bad.json")
    assert code == 2 and "not an advtrain data manifest" in text
