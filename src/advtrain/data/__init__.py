"""Data: the embedded digits set (default), MNIST/CIFAR-10 (torchvision) and synthetic data.

Datasets and tensors here are plain PyTorch; the ``*DataModule`` classes are their Lightning edge.
"""

from advtrain.data.base import (
    ClassificationDataModule,
    EpochSeededSampler,
    dataset_tensors,
    tensors_sha256,
)
from advtrain.data.digits import DigitsDataModule, load_digits_tensors
from advtrain.data.synthetic import SyntheticDataModule, make_synthetic

__all__ = [
    "ClassificationDataModule",
    "DigitsDataModule",
    "EpochSeededSampler",
    "SyntheticDataModule",
    "dataset_tensors",
    "load_digits_tensors",
    "make_synthetic",
    "tensors_sha256",
]
