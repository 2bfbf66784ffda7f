"""Data: the embedded digits set (default), MNIST/CIFAR-10 (torchvision) and synthetic data.

Datasets and tensors here are plain PyTorch; the ``*DataModule`` classes are their Lightning edge.
``MNISTDataModule`` and ``CIFAR10DataModule`` import torchvision (the ``vision`` extra) only when
constructed, so this package imports without it.
"""

from advtrain.data.base import (
    ClassificationDataModule,
    EpochSeededSampler,
    dataset_tensors,
    tensors_sha256,
)
from advtrain.data.cifar10 import CIFAR10DataModule
from advtrain.data.digits import DigitsDataModule, load_digits_tensors
from advtrain.data.mnist import MNISTDataModule
from advtrain.data.synthetic import SyntheticDataModule, make_synthetic
from advtrain.data.vision import DatasetNotFoundError

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
