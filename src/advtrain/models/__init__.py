"""Classifiers used by advtrain's recipes; normalisation lives inside the model."""

from advtrain.models.normalize import Normalize
from advtrain.models.resnet import PreActResNet18, WideResNet
from advtrain.models.small import MLP, SmallCNN

__all__ = ["MLP", "Normalize", "PreActResNet18", "SmallCNN", "WideResNet"]
