"""advtrain: adversarial training and certified-robustness evaluation for PyTorch Lightning."""

from advtrain.threat import ThreatModel

__version__ = "0.1.0"

__all__ = ["ThreatModel", "__version__"]
