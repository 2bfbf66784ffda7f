"""Data: the embedded digits set (default), MNIST/CIFAR-10 (torchvision) and synthetic data.

Datasets, tensors, samplers and hashing here are plain PyTorch and import without Lightning. The
``*DataModule`` classes are their Lightning edge (:mod:`advtrain.data.datamodules`,
:mod:`advtrain.data.vision_datamodule`, :mod:`advtrain.data.mnist`, :mod:`advtrain.data.cifar10`):
they are importable from here as always, and Lightning is imported on first use of one of them.
``MNISTDataModule`` and ``CIFAR10DataModule`` import torchvision (the ``vision`` extra) only when
constructed, so this package imports without it.
"""

from typing import Any

from advtrain.data.base import EpochSeededSampler, dataset_tensors, tensors_sha256
from advtrain.data.digits import load_digits_tensors
from advtrain.data.synthetic import make_synthetic
from advtrain.data.vision import DatasetNotFoundError
from advtrain.lazy import lazy_attribute

#: The Lightning data modules (the edge), by the module that defines them; imported on first use.
_DATA_MODULES = {
    "CIFAR10DataModule": "advtrain.data.cifar10",
    "ClassificationDataModule": "advtrain.data.datamodules",
    "DigitsDataModule": "advtrain.data.datamodules",
    "MNISTDataModule": "advtrain.data.mnist",
    "SyntheticDataModule": "advtrain.data.datamodules",
}


def __getattr__(name: str) -> Any:
    return lazy_attribute(__name__, name, _DATA_MODULES)


__all__ = [
    "CIFAR10DataModule",
    "ClassificationDataModule",
    "DatasetNotFoundError",
    "DigitsDataModule",
    "EpochSeededSampler",
    "MNISTDataModule",
    "SyntheticDataModule",
    "dataset_tensors",
    "load_digits_tensors",
    "make_synthetic",
    "tensors_sha256",
]
