"""advtrain.metrics."""

from advtrain.metrics.certified import CertifiedAccuracy, certified_accuracy

__all__ = ["CertifiedAccuracy", "certified_accuracy"]
