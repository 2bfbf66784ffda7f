"""advtrain: adversarial training and certified-robustness evaluation for PyTorch Lightning.

The core (``advtrain.attacks``, ``losses``, ``schedules``, ``certify``, ``metrics``, ``models``,
``evaluation``) is plain PyTorch; ``advtrain.callbacks`` and ``advtrain.lit`` are the Lightning
edge and ``advtrain.cli`` the Hydra command line. Importing ``advtrain`` imports no Lightning.
"""

from advtrain.evaluation import EvaluationResult, evaluate_attacks
from advtrain.threat import ThreatModel

__version__ = "0.1.0"

__all__ = ["EvaluationResult", "ThreatModel", "__version__", "evaluate_attacks"]
