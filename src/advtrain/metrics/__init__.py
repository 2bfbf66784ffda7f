"""advtrain.metrics."""

from advtrain.metrics.certified import CertifiedAccuracy, certified_accuracy
from advtrain.metrics.robust import (
    AttackSuccessRate,
    RobustAccuracy,
    attack_success_rate,
    robust_accuracy,
)

__all__ = [
    "AttackSuccessRate",
    "CertifiedAccuracy",
    "RobustAccuracy",
    "attack_success_rate",
    "certified_accuracy",
    "robust_accuracy",
]
