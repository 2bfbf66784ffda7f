"""LightningModules built by the command line."""

from advtrain.lit.classifier import AdversarialClassifier

__all__ = ["AdversarialClassifier"]
