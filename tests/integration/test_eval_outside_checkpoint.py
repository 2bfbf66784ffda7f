"""advtrain-eval on a checkpoint advtrain did not write: an outside project (a package written to a
temporary folder, ``lightning`` imports, a LightningModule that pickles its ``nn.Module`` into its
hyper-parameters, a data module that normalises) trained by its own Trainer; evaluated with
``trust_checkpoint=false``, its clean accuracy is the one the run logged, and the contamination
flag fires exactly when the evaluated split overlaps the training data."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

from advtrain.checkpoints import CheckpointMismatchError
from advtrain.cli.config import compose
from advtrain.cli.evaluate import run

PACKAGE = "vendor_digits"

FILES = {
    "__init__.py": "",
    "nets.py": """
        import torch
        from torch import nn


        class DenseNet(nn.Module):
            def __init__(self, hidden: int = 64) -> None:
                super().__init__()
                self.body = nn.Sequential(
                    nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10)
                )

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.body(x)
    """,
    "lit.py": """
        import torch
        import torch.nn.functional as F
        from lightning import LightningModule
        from torchmetrics.classification import Accuracy


        class DigitsModule(LightningModule):
            def __init__(self, net: torch.nn.Module, lr: float = 3e-3) -> None:
                super().__init__()
                self.save_hyperparameters(logger=False)  # pickles `net`
                self.net = net
                self.val_acc = Accuracy(task="multiclass", num_classes=10)

            def forward(self, x):
                return self.net(x)

            def training_step(self, batch, batch_idx):
                x, y = batch
                return F.cross_entropy(self(x), y)

            def validation_step(self, batch, batch_idx):
                x, y = batch
                self.val_acc(self(x).argmax(1), y)
                self.log("val/acc", self.val_acc, on_epoch=True)

            def configure_optimizers(self):
                return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
    """,
    "data.py": """
        import numpy as np
        import torch
        from lightning import LightningDataModule
        from PIL import Image
        from torch.utils.data import DataLoader, Dataset, Subset, random_split
        from torchvision import transforms


        class Digits(Dataset):
            def __init__(self, transform=None):
                from sklearn.datasets import load_digits

                bunch = load_digits()
                self.data = np.round(bunch.images * 255 / 16).astype(np.uint8)
                self.targets = bunch.target
                self.transform = transform

            def __len__(self):
                return len(self.targets)

            def __getitem__(self, i):
                img = Image.fromarray(self.data[i], mode="L")
                return self.transform(img), int(self.targets[i])


        class DigitsDM(LightningDataModule):
            def __init__(self, batch_size: int = 64, overlap: bool = False):
                super().__init__()
                self.batch_size = batch_size
                self.overlap = overlap
                self.transforms = transforms.Compose(
                    [transforms.ToTensor(), transforms.Normalize((0.9,), (0.1,))]
                )
                self.train = None

            def setup(self, stage=None):
                if self.train is None:
                    full = Digits(self.transforms)
                    self.train, self.val, self.test = random_split(
                        full, [1297, 200, 300], generator=torch.Generator().manual_seed(42)
                    )
                    if self.overlap:  # a test split that reuses training examples
                        reused = list(self.train.indices[:50]) + list(self.test.indices[:50])
                        self.test = Subset(full, reused)

            def train_dataloader(self):
                return DataLoader(self.train, batch_size=self.batch_size, shuffle=True)

            def val_dataloader(self):
                return DataLoader(self.val, batch_size=self.batch_size)

            def test_dataloader(self):
                return DataLoader(self.test, batch_size=self.batch_size)
    """,
}


@pytest.fixture(scope="module")
def vendor(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The outside package, and a checkpoint its own training script wrote (in a subprocess, as
    the vendor would: advtrain is not involved)."""
    root = tmp_path_factory.mktemp("vendor")
    package = root / PACKAGE
    package.mkdir()
    for name, text in FILES.items():
        (package / name).write_text(textwrap.dedent(text))
    script = f"""
import lightning as L, torch
from lightning.pytorch.callbacks import ModelCheckpoint
from {PACKAGE}.nets import DenseNet
from {PACKAGE}.lit import DigitsModule
from {PACKAGE}.data import DigitsDM
L.seed_everything(0)
torch.set_num_threads(1)
ckpt = ModelCheckpoint(dirpath="{root / "ckpts"}", monitor="val/acc", mode="max", filename="best")
trainer = L.Trainer(max_epochs=4, logger=False, enable_progress_bar=False, callbacks=[ckpt],
                    enable_model_summary=False)
trainer.fit(DigitsModule(DenseNet(hidden=48)), datamodule=DigitsDM())
print("BEST", ckpt.best_model_score.item())
"""
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(root), "PYTHONWARNINGS": "ignore"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    best = float(proc.stdout.split("BEST")[-1].split()[0])
    return {"root": root, "ckpt": root / "ckpts" / "best.ckpt", "val_acc": best}


def evaluate(
    vendor: dict[str, Any],
    out: Path,
    *extra: str,
    ckpt: Path | None = None,
    data: tuple[str, ...] = ("data=custom", f"data.module._target_={PACKAGE}.data.DigitsDM"),
) -> Any:
    overrides = [
        f"ckpt_path={ckpt or vendor['ckpt']}",
        "model=custom",
        f"model._target_={PACKAGE}.nets.DenseNet",
        "+model.hidden=48",
        *data,
        f"python_path=[{vendor['root']}]",
        "threat.eps=0.1",
        "attacks=pgd",
        "attacks.pgd-50x5.steps=3",
        "attacks.pgd-50x5.restarts=1",
        "eps_grid.factors=[]",
        "certify.bounds.methods=[]",
        "sanity.n_examples=16",
        "progress=false",
        "ledger=null",
        *extra,
    ]
    return run(compose("eval", overrides, str(out)))


def test_the_vendors_checkpoint_evaluates_without_trust_at_the_logged_accuracy(
    vendor: dict[str, Any], tmp_path: Path
) -> None:
    report = evaluate(vendor, tmp_path / "val", "data.split=val")
    ckpt = report["checkpoint"]
    assert ckpt["loaded_with"] == "weights_only+skipped"
    assert f"{PACKAGE}.nets.DenseNet" in ckpt["skipped"]
    # the normalisation of the vendor's transform was found and undone: the same accuracy
    assert report["clean_accuracy"] == pytest.approx(vendor["val_acc"], abs=0.006)
    assert report["settings"]["data"]["normalization"]["std"] == [0.1]
    assert report["data"]["contamination"] == {
        "checked": True,
        "overlap": 0,
        "n": 200,
        "train_examples": 1297,
        "note": "",
    }
    codes = report["sanity"]["triggered"]
    assert "test_data_in_training_data" not in codes
    assert "clean_accuracy_below_training_log" not in codes
    assert 0 < report["robust_accuracy"]["pgd-50x5"] < report["clean_accuracy"]


def test_a_test_split_that_overlaps_the_training_data_is_flagged(
    vendor: dict[str, Any], tmp_path: Path
) -> None:
    report = evaluate(vendor, tmp_path / "overlap", "+data.module.overlap=true")
    assert report["data"]["contamination"]["overlap"] == 50
    assert "test_data_in_training_data" in report["sanity"]["triggered"]


def test_an_accuracy_far_below_the_logged_one_is_flagged(
    vendor: dict[str, Any], tmp_path: Path
) -> None:
    """The template case: the vendor's model (trained on normalised digits) evaluated on
    advtrain's digits in pixels, where nothing says the model expects normalised inputs."""
    report = evaluate(vendor, tmp_path / "wrong", data=("data=digits",))
    assert "clean_accuracy_below_training_log" in report["sanity"]["triggered"]


class Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_hostile_hyperparameters_never_run(vendor: dict[str, Any], tmp_path: Path) -> None:
    marker = tmp_path / "payload_ran"
    ckpt = torch.load(vendor["ckpt"], map_location="cpu", weights_only=False)
    ckpt["hyper_parameters"]["lr"] = Payload(marker)
    hostile = tmp_path / "hostile.ckpt"
    torch.save(ckpt, hostile)
    assert b"posix" in pickle.dumps(Payload(marker))
    report = evaluate(vendor, tmp_path / "h", "data.split=val", ckpt=hostile)
    assert not marker.exists(), "the pickle's payload ran"
    assert "posix.system" in report["checkpoint"]["skipped"]


@pytest.mark.parametrize(
    ("extra", "error", "match"),
    [
        ([f"model._target_={PACKAGE}.nets.Missing"], ValueError, "Missing"),
        (["+model.hidden=32"], CheckpointMismatchError, r"another shape: body\.1\.bias"),
        (["data.split=predict"], ValueError, "has no predict split"),
    ],
)
def test_bad_input(
    vendor: dict[str, Any], tmp_path: Path, extra: list[str], error: type, match: str
) -> None:
    overrides = list(extra)
    if overrides[0].startswith("+model.hidden"):  # replaces the default hidden=48
        overrides[0] = "model.hidden=32"
    with pytest.raises(error, match=match):
        evaluate(vendor, tmp_path / "bad", *overrides)


def test_the_console_script_with_the_python_path_flag(
    vendor: dict[str, Any], tmp_path: Path
) -> None:
    exe = Path(sys.executable).with_name("advtrain-eval")
    proc = subprocess.run(
        [
            str(exe),
            "--python-path",
            str(vendor["root"]),
            f"ckpt_path={vendor['ckpt']}",
            "model=custom",
            f"model._target_={PACKAGE}.nets.DenseNet",
            "+model.hidden=48",
            "data=custom",
            f"data.module._target_={PACKAGE}.data.DigitsDM",
            "data.split=val",
            "threat.eps=0.1",
            "attacks=pgd",
            "attacks.pgd-50x5.steps=2",
            "attacks.pgd-50x5.restarts=1",
            "eps_grid.factors=[]",
            "certify.bounds.methods=[]",
            "n_examples=32",
            "progress=false",
            "ledger=null",
            f"hydra.run.dir={tmp_path / 'r'}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "skipped what needs code to unpickle" in proc.stderr


def test_the_vendors_lightning_module_class_is_built_from_its_checkpoint(
    vendor: dict[str, Any], tmp_path: Path
) -> None:
    """``module=`` names the vendor's LightningModule: its plain hyper-parameter (lr) comes from
    the checkpoint, the pickled one (net) from module_kwargs; the module's own forward runs."""
    report = evaluate(
        vendor,
        tmp_path / "module",
        "data.split=val",
        f"module={PACKAGE}.lit.DigitsModule",
        f"+module_kwargs.net={{_target_:{PACKAGE}.nets.DenseNet,hidden:48}}",
    )
    assert report["clean_accuracy"] == pytest.approx(vendor["val_acc"], abs=0.006)
    assert report["checkpoint"]["loaded_with"] == "weights_only+skipped"
    assert "DigitsModule" in report["settings"]["model"] and "lr" in report["settings"]["model"]


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ([], r"pickled the hyper-parameter\(s\) net .*module_kwargs"),
        ([f"module={PACKAGE}.lit.Missing"], "does not import"),
        ([f"module={PACKAGE}.data.Digits"], "not a torch.nn.Module"),
    ],
)
def test_a_module_that_cannot_be_built_says_what_to_give(
    vendor: dict[str, Any], tmp_path: Path, extra: list[str], match: str
) -> None:
    overrides = extra or [f"module={PACKAGE}.lit.DigitsModule"]
    with pytest.raises(ValueError, match=match):
        evaluate(vendor, tmp_path / "bad-module", "data.split=val", *overrides)
