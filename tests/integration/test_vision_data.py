"""MNISTDataModule and CIFAR10DataModule on tiny files written here in the real on-disk formats.

MNIST: the four idx-ubyte files in ``<root>/MNIST/raw/`` (torchvision reads the uncompressed files
and checks no checksum of them). CIFAR-10: the pickled python batches in
``<root>/cifar-10-batches-py/``. torchvision checks every CIFAR-10 batch against its published
MD5, which tiny files cannot match; the tests therefore load them through a subclass of
``torchvision.datasets.CIFAR10`` whose ``train_list``/``test_list``/``meta`` carry the MD5 of the
files written here — the mechanism torchvision itself uses for CIFAR-100 — so torchvision's real
integrity check, unpickling and layout code all run. Downloads are served from a local HTTP
server (no network). Everything needs torchvision (the ``vision`` extra) except the test of the
message shown without it.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from advtrain.data import CIFAR10DataModule, DatasetNotFoundError, MNISTDataModule, tensors_sha256
from advtrain.data.base import EpochSeededSampler
from advtrain.data.vision import AugmentDraw, AugmentingSampler

MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
CIFAR_FILES = (
    *(f"data_batch_{i}" for i in range(1, 6)),
    "test_batch",
    "batches.meta",
)
CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer"]
CIFAR_CLASSES += ["dog", "frog", "horse", "ship", "truck"]
N_TRAIN, N_TEST, VAL = 200, 50, 20  # 20 training images per class; 2 per class held out


def _labels(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.permutation(np.arange(n) % 10).astype(np.uint8)


def write_mnist(root: Path, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The four MNIST idx files (big-endian magic 0x0803/0x0801 and sizes, then uint8 data)."""
    rng = np.random.default_rng(seed)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for prefix, n in (("train", N_TRAIN), ("t10k", N_TEST)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = _labels(rng, n)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
            struct.pack(">IIII", 0x0803, n, 28, 28) + x.tobytes()
        )
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(
            struct.pack(">II", 0x0801, n) + y.tobytes()
        )
        arrays[prefix] = (x, y)
    return arrays


def write_cifar(root: Path, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """CIFAR-10 python batches: pickled dicts, ``data`` uint8 rows of 1024 R, 1024 G, 1024 B."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    train_x, train_y = [], []
    arrays = {}
    for name in CIFAR_FILES[:-1]:
        n = N_TRAIN // 5 if name != "test_batch" else N_TEST
        x = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        y = _labels(rng, n)
        entry = {
            "batch_label": name,
            "labels": [int(v) for v in y],
            "data": x,
            "filenames": [f"{name}_{i}.png" for i in range(n)],
        }
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f, protocol=2)
        if name == "test_batch":
            arrays["test"] = (x, y)
        else:
            train_x.append(x)
            train_y.append(y)
    arrays["train"] = (np.concatenate(train_x), np.concatenate(train_y))
    meta = {"label_names": CIFAR_CLASSES, "num_cases_per_batch": N_TRAIN // 5, "num_vis": 3072}
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump(meta, f, protocol=2)
    return arrays


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


@pytest.fixture(scope="module")
def tv() -> Any:
    return pytest.importorskip("torchvision")


@pytest.fixture(scope="module")
def mnist(tv: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    root = tmp_path_factory.mktemp("mnist")
    return root, write_mnist(root)


@pytest.fixture(scope="module")
def cifar(tv: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    root = tmp_path_factory.mktemp("cifar")
    return root, write_cifar(root)


def tiny_cifar_module(tv: Any, root: Path) -> type[CIFAR10DataModule]:
    """CIFAR10DataModule reading through a CIFAR10 subclass that knows the tiny files' MD5s."""
    folder = root / "cifar-10-batches-py"
    base = tv.datasets.CIFAR10
    tiny = type(
        "TinyCIFAR10",
        (base,),
        {
            "train_list": [[n, _md5(folder / n)] for n, _ in base.train_list],
            "test_list": [[n, _md5(folder / n)] for n, _ in base.test_list],
            "meta": {**base.meta, "md5": _md5(folder / base.meta["filename"])},
        },
    )

    class TinyCIFAR10DataModule(CIFAR10DataModule):
        def dataset_class(self) -> type:
            return tiny

    return TinyCIFAR10DataModule


@pytest.fixture()
def cifar_dm(tv: Any, cifar: tuple[Path, dict[str, Any]]) -> Any:
    root, _ = cifar
    cls = tiny_cifar_module(tv, root)

    def make(**kwargs: Any) -> CIFAR10DataModule:
        dm = cls(root=root, **{"val_size": VAL, "batch_size": 16, **kwargs})
        dm.setup("fit")
        return dm

    return make


def _mnist_dm(root: Path, **kwargs: Any) -> MNISTDataModule:
    dm = MNISTDataModule(root=root, **{"val_size": VAL, "batch_size": 16, **kwargs})
    dm.setup("fit")
    return dm


def _rows(x: torch.Tensor) -> list[bytes]:
    return sorted(bytes(row) for row in x.reshape(len(x), -1).to(torch.uint8).numpy())


def _as_uint8(x: torch.Tensor) -> torch.Tensor:
    """Inverse of the /255 scaling (exact: every k/255 rounds back to k)."""
    return (x * 255).round().to(torch.uint8)


# -- MNIST ----------------------------------------------------------------------------------------
def test_mnist_reads_the_idx_files_exactly(mnist: tuple[Path, dict[str, Any]]) -> None:
    root, arrays = mnist
    dm = _mnist_dm(root)
    assert (dm.name, dm.num_classes, dm.input_shape, dm.bounds) == (
        "mnist",
        10,
        (1, 28, 28),
        (0.0, 1.0),
    )
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (N_TRAIN - VAL, VAL, N_TEST)
    x, y = dm.test_tensors()
    assert x.shape == (N_TEST, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.long
    x_raw, y_raw = arrays["t10k"]
    # The official test set, in file order, scaled to [0, 1].
    assert torch.equal(x, torch.from_numpy(x_raw).unsqueeze(1).float() / 255)
    assert torch.equal(y, torch.from_numpy(y_raw).long())
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0 and float(x.max()) > 0.99
    x5, y5 = dm.test_tensors(5)
    assert torch.equal(x5, x[:5]) and torch.equal(y5, y[:5])
    x5 += 1.0  # new tensors: the data module's copy is untouched
    assert torch.equal(dm.test_tensors(5)[0], x[:5])
    # Train and validation partition the training file; the hold-out is stratified.
    xs, ys = zip(*(s.tensors() for s in (dm.train_set, dm.val_set)), strict=True)
    x_tr_raw, _ = arrays["train"]
    assert _rows(_as_uint8(torch.cat(xs))) == _rows(torch.from_numpy(x_tr_raw))
    assert torch.bincount(ys[1], minlength=10).tolist() == [VAL // 10] * 10
    assert torch.bincount(ys[0], minlength=10).tolist() == [(N_TRAIN - VAL) // 10] * 10
    image, label = dm.train_set[0]
    assert image.shape == (1, 28, 28) and label.dtype == torch.long


def test_holdout_follows_split_seed_not_the_run_seed(mnist: tuple[Path, dict[str, Any]]) -> None:
    root, _ = mnist
    a, b, c = _mnist_dm(root, seed=0), _mnist_dm(root, seed=7), _mnist_dm(root, split_seed=1)
    assert tensors_sha256(*a.val_set.tensors()) == tensors_sha256(*b.val_set.tensors())
    assert tensors_sha256(*a.val_set.tensors()) != tensors_sha256(*c.val_set.tensors())
    loader = a.train_dataloader()
    assert type(loader.sampler) is EpochSeededSampler and loader.sampler.seed == 0
    first = next(iter(loader))
    assert torch.equal(first[0], next(iter(_mnist_dm(root, seed=0).train_dataloader()))[0])
    assert not torch.equal(first[1], next(iter(b.train_dataloader()))[1])


def test_val_size_out_of_range_is_refused(mnist: tuple[Path, dict[str, Any]]) -> None:
    root, _ = mnist
    with pytest.raises(ValueError, match="val_size must be >= 0"):
        MNISTDataModule(root=root, val_size=-1)
    with pytest.raises(TypeError, match="val_size must be an integer"):
        MNISTDataModule(root=root, val_size=2.5)  # type: ignore[arg-type]
    for bad in (5, N_TRAIN - 5, N_TRAIN, 60_000):
        with pytest.raises(ValueError, match=r"val_size=\d+ is out of range .* \[10, 190\]"):
            _mnist_dm(root, val_size=bad)
    dm = _mnist_dm(root, val_size=0)
    assert (len(dm.train_set), len(dm.val_set)) == (N_TRAIN, 0)


def test_missing_files_say_where_to_put_them(tv: Any, tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as info:
        MNISTDataModule(root=tmp_path / "data", download=False)
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    for name in MNIST_FILES:
        assert f"{tmp_path / 'data' / 'MNIST' / 'raw' / name}\n" in message + "\n"
    assert "download=False" in message and "data.module.download=true" in message
    assert "ADVTRAIN_DATA" in message

    write_mnist(tmp_path / "some")
    (tmp_path / "some" / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(
        DatasetNotFoundError, match=r"1 of 4 files missing: t10k-labels-idx1-ubyte\)"
    ):
        MNISTDataModule(root=tmp_path / "some")

    write_mnist(tmp_path / "cut")
    images = tmp_path / "cut" / "MNIST" / "raw" / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-28])  # one image short
    with pytest.raises(DatasetNotFoundError, match=r"missing or unreadable \(torchvision: "):
        MNISTDataModule(root=tmp_path / "cut").setup()

    with pytest.raises(DatasetNotFoundError) as info:
        CIFAR10DataModule(root=tmp_path / "data")
    for name in CIFAR_FILES:
        assert str(tmp_path / "data" / "cifar-10-batches-py" / name) in str(info.value)
    assert "cifar-10-python.tar.gz" in str(info.value)


@pytest.fixture()
def http_mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, str]]:
    """A local HTTP server for the download tests (no network involved)."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    folder = tmp_path / "mirror"
    folder.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    class Server(http.server.ThreadingHTTPServer):
        def handle_error(self, *args: Any) -> None:  # a client that reads only the headers
            pass

    server = Server(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def _mnist_from(tv: Any, mirror: str, resources: list[tuple[str, str]]) -> type[MNISTDataModule]:
    # Named MNIST: torchvision reads <root>/<class name>/raw.
    cls = type("MNIST", (tv.datasets.MNIST,), {"mirrors": [mirror], "resources": resources})

    class MirroredMNIST(MNISTDataModule):
        def dataset_class(self) -> type:
            return cls

    return MirroredMNIST


def test_download_then_load(
    tv: Any, mnist: tuple[Path, dict[str, Any]], http_mirror: tuple[Path, str], tmp_path: Path
) -> None:
    root, _ = mnist
    folder, url = http_mirror
    resources = []
    for name in MNIST_FILES:
        (folder / f"{name}.gz").write_bytes(
            gzip.compress((root / "MNIST" / "raw" / name).read_bytes(), mtime=0)
        )
        resources.append((f"{name}.gz", _md5(folder / f"{name}.gz")))
    cls = _mnist_from(tv, url, resources)
    dm = cls(root=tmp_path / "fresh", download=True, val_size=VAL)
    dm.prepare_data()
    for name in MNIST_FILES:
        assert (tmp_path / "fresh" / "MNIST" / "raw" / name).read_bytes() == (
            root / "MNIST" / "raw" / name
        ).read_bytes()
    dm.setup()
    assert tensors_sha256(*dm.test_tensors()) == tensors_sha256(*_mnist_dm(root).test_tensors())


def test_failed_download_says_where_to_put_the_files(
    tv: Any, http_mirror: tuple[Path, str], tmp_path: Path
) -> None:
    _, url = http_mirror
    cls = _mnist_from(tv, url + "gone/", [(f"{n}.gz", "0" * 32) for n in MNIST_FILES])
    dm = cls(root=tmp_path / "data", download=True)  # no check yet: it may download
    with pytest.raises(DatasetNotFoundError) as info:
        dm.setup()  # without a Trainer, setup downloads (prepare_data) first
    message = str(info.value)
    assert "could not be downloaded" in message and "HTTP Error 404" in message
    assert "download them on another machine" in message
    for name in MNIST_FILES:
        assert str(tmp_path / "data" / "MNIST" / "raw" / name) in message


# -- CIFAR-10 -------------------------------------------------------------------------------------
def test_cifar_reads_the_python_batches_exactly(
    cifar_dm: Any, cifar: tuple[Path, dict[str, Any]]
) -> None:
    _, arrays = cifar
    dm = cifar_dm(augment=False)
    assert (dm.name, dm.input_shape, dm.num_classes) == ("cifar10", (3, 32, 32), 10)
    assert dm.classes == CIFAR_CLASSES  # from batches.meta
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (N_TRAIN - VAL, VAL, N_TEST)
    x, y = dm.test_tensors()
    x_raw, y_raw = arrays["test"]
    assert x.shape == (N_TEST, 3, 32, 32) and x.dtype == torch.float32
    # Channel-major rows: the first 1024 bytes are the red plane, row by row.
    assert torch.equal(x[7, 0], torch.from_numpy(x_raw[7, :1024]).view(32, 32).float() / 255)
    assert torch.equal(x[7, 2], torch.from_numpy(x_raw[7, 2048:]).view(32, 32).float() / 255)
    assert torch.equal(y, torch.from_numpy(y_raw).long())
    xs, ys = zip(*(s.tensors() for s in (dm.train_set, dm.val_set)), strict=True)
    assert _rows(_as_uint8(torch.cat(xs))) == _rows(torch.from_numpy(arrays["train"][0]))
    assert torch.bincount(ys[1], minlength=10).tolist() == [VAL // 10] * 10


def test_cifar_files_failing_the_md5_check_are_named(
    tv: Any, cifar: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    root, _ = cifar
    shutil.copytree(root, tmp_path / "copy")
    cls = tiny_cifar_module(tv, tmp_path / "copy")
    batch = tmp_path / "copy" / "cifar-10-batches-py" / "data_batch_3"
    data = bytearray(batch.read_bytes())
    data[-100] ^= 0xFF
    batch.write_bytes(bytes(data))
    with pytest.raises(DatasetNotFoundError, match=r"fail torchvision's MD5 check: data_batch_3 "):
        cls(root=tmp_path / "copy", val_size=VAL).setup()
    # The published checksums: the stock module refuses every tiny file.
    with pytest.raises(DatasetNotFoundError, match=r"MD5 check: data_batch_1, .*batches\.meta "):
        CIFAR10DataModule(root=root, val_size=VAL).setup()


def _reference_augment(x: torch.Tensor, draw: AugmentDraw) -> torch.Tensor:
    padded = F.pad(x, (4, 4, 4, 4))
    out = padded[:, draw.dy : draw.dy + 32, draw.dx : draw.dx + 32]
    return out.flip(-1) if draw.flip else out


def test_augmentation_is_a_padded_crop_and_flip_of_training_images_only(cifar_dm: Any) -> None:
    dm = cifar_dm(augment=True, batch_size=N_TRAIN, seed=3)
    plain = cifar_dm(augment=False, batch_size=N_TRAIN, seed=3)
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, AugmentingSampler)
    draws = list(loader.sampler)
    x_aug, y_aug = next(iter(loader))
    x_plain, y_plain = next(iter(plain.train_dataloader()))
    # The same permutation with and without augmentation.
    assert torch.equal(y_aug, y_plain)
    assert [d.index for d in draws] == list(plain.train_dataloader().sampler)
    originals, _ = dm.train_set.tensors()
    for i, draw in enumerate(draws):
        assert torch.equal(x_aug[i], _reference_augment(originals[draw.index], draw)), draw
        assert torch.equal(x_plain[i], originals[draw.index])
    flips = sum(d.flip for d in draws)
    assert 0.5 * len(draws) - 30 <= flips <= 0.5 * len(draws) + 30  # about 4.5 sd of Bin(180, 1/2)
    assert {d.dy for d in draws} == {d.dx for d in draws} == set(range(9))
    assert not torch.equal(x_aug, x_plain) and float(x_aug.min()) == 0.0  # zero padding shows
    # Validation and test images are never augmented.
    for split in ("val", "test"):
        batch = next(iter(getattr(dm, f"{split}_dataloader")()))[0]
        assert torch.equal(batch, getattr(dm, f"{split}_set").tensors()[0][: len(batch)])


def test_augmentation_is_reproducible_across_runs_epochs_and_workers(cifar_dm: Any) -> None:
    def epoch_batches(epoch: int, seed: int = 0, workers: int = 0) -> torch.Tensor:
        loader = cifar_dm(seed=seed, num_workers=workers, batch_size=64).train_dataloader()
        loader.sampler.set_epoch(epoch)
        torch.manual_seed(epoch * 31 + workers)  # the global RNG plays no part
        return torch.cat([b[0] for b in loader])

    e1 = epoch_batches(1)
    assert torch.equal(e1, epoch_batches(1))  # a fresh (resumed) run sees the same epoch
    assert not torch.equal(e1, epoch_batches(2))
    assert not torch.equal(e1, epoch_batches(1, seed=1))
    assert torch.equal(e1, epoch_batches(1, workers=2))
    # Resumed mid-epoch (a preemption checkpoint after 2 of the epoch's 3 batches of 64).
    loader = cifar_dm(batch_size=64).train_dataloader()
    loader.load_state_dict({"epoch": 1, "batches_done": 2})
    assert torch.equal(torch.cat([b[0] for b in loader]), e1[128:])


def test_trainer_fit_fast_dev_run_on_augmented_cifar(cifar_dm: Any, tmp_path: Path) -> None:
    from advtrain.attacks import PGD
    from advtrain.callbacks import AdversarialTraining
    from advtrain.lit import AdversarialClassifier
    from advtrain.models import SmallCNN

    pl.seed_everything(0, verbose=False)
    dm = cifar_dm(augment=True, batch_size=8)
    module = AdversarialClassifier(
        SmallCNN(input_shape=(3, 32, 32), width=4, hidden=16), num_classes=10, lr=1e-2
    )
    trainer = pl.Trainer(
        fast_dev_run=True,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[AdversarialTraining(PGD(eps=8 / 255, steps=1, seed=0))],
        default_root_dir=str(tmp_path),
    )
    before = [p.detach().clone() for p in module.parameters()]
    trainer.fit(module, datamodule=dm)
    assert trainer.state.finished and trainer.global_step == 1
    assert any(not torch.equal(p, q) for p, q in zip(before, module.parameters(), strict=True))
    assert trainer.num_val_batches == [1]  # the held-out images were validated on


# -- without torchvision --------------------------------------------------------------------------
def test_without_torchvision_the_error_names_the_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "torchvision", None)  # what `import` sees when absent
    for cls in (MNISTDataModule, CIFAR10DataModule):
        with pytest.raises(ImportError) as info:
            cls(root=tmp_path)
        message = str(info.value)
        assert cls.__name__ in message and 'pip install "advtrain[vision]"' in message
        assert "torch==2.14.1 torchvision==0.29.1" in message


# -- the CLI --------------------------------------------------------------------------------------
def _vision_cli_overrides() -> list[str]:
    return [
        "data=mnist",
        "data.module.download=false",
        f"data.module.val_size={VAL}",
        "data.module.batch_size=8",
        "data.module.num_workers=0",
        "trainer=cpu",
        "++trainer.fast_dev_run=true",
        "trainer.enable_progress_bar=false",
        "evaluation.n_examples=8",
    ]


def test_train_cli_runs_on_mnist_files(
    mnist: tuple[Path, dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from advtrain.cli.config import compose
    from advtrain.cli.train import run

    from .test_recipes import _shrink

    root, arrays = mnist
    monkeypatch.setenv("ADVTRAIN_DATA", str(root))  # the packaged config's data.module.root
    cfg = compose(
        overrides=["recipe=madry_mnist", *_vision_cli_overrides()], output_dir=str(tmp_path)
    )
    assert cfg.data.module.root == str(root)
    cfg.model.width, cfg.model.hidden = 4, 16
    _shrink(cfg)
    report = run(cfg)
    assert report is not None
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["data"]["name"] == "mnist" and saved["n_examples"] == 8
    x_raw, y_raw = arrays["t10k"]
    expected = tensors_sha256(
        torch.from_numpy(x_raw[:8]).unsqueeze(1).float() / 255, torch.from_numpy(y_raw[:8]).long()
    )
    assert saved["data_sha256"] == expected  # the first 8 official test images, in file order
    assert 0.0 <= saved["clean_accuracy"] <= 1.0


@pytest.mark.ddp
def test_train_cli_runs_on_mnist_files_under_two_process_ddp(
    mnist: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    """The vision modules under real DDP (gloo): each rank loads the files, trains on its own
    half of every epoch, and rank zero writes the report."""
    root, _ = mnist
    exe = Path(sys.executable).with_name("advtrain-train")
    overrides = [
        o for o in _vision_cli_overrides() if "fast_dev_run" not in o and o != "trainer=cpu"
    ]
    proc = subprocess.run(
        [
            str(exe),
            "recipe=madry_mnist",
            *overrides,
            "trainer=ddp",
            "trainer.devices=2",
            "trainer.accelerator=cpu",
            "trainer.max_epochs=1",
            "++trainer.limit_train_batches=2",
            "++trainer.limit_val_batches=1",
            "model.width=4",
            "model.hidden=16",
            "attack.steps=1",
            "callbacks.robust_evaluation.n_examples=8",
            "callbacks.robust_evaluation.every_n_epochs=1",
            "evaluation.attacks.pgd-20.steps=1",
            "evaluation.attacks.autoattack.version=fast",
            "evaluation.eps_grid.factors=[0.0,1.0]",
            f"hydra.run.dir={tmp_path}",
        ],
        env={**os.environ, "ADVTRAIN_DATA": str(root), "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["data"]["name"] == "mnist"
    assert "MEMBER: 2/2" in proc.stderr, "Lightning started a second process"
    assert "distributed_backend=gloo" in proc.stderr
    assert 0.0 <= report["clean_accuracy"] <= 1.0


def test_train_cli_without_the_files_prints_where_to_put_them(tv: Any, tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("advtrain-train")
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    env["ADVTRAIN_DATA"] = str(tmp_path / "nowhere")
    proc = subprocess.run(
        [str(exe), *_vision_cli_overrides(), f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode != 0
    for name in MNIST_FILES:
        assert str(tmp_path / "nowhere" / "MNIST" / "raw" / name) in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert not (tmp_path / "run" / "report.json").exists()
