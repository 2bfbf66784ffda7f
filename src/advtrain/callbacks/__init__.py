"""Lightning callbacks: adversarial training on the fly and robust/certified evaluation."""

from advtrain.callbacks.adversarial_training import AdversarialTraining
from advtrain.callbacks.certified_evaluation import CertifiedEvaluation
from advtrain.callbacks.free import FreeAdversarialTraining
from advtrain.callbacks.guard import CatastrophicOverfittingGuard
from advtrain.callbacks.preemption import RequeueOnSignal
from advtrain.callbacks.provenance import DataProvenance
from advtrain.callbacks.robust_evaluation import RobustEvaluation

__all__ = [
    "AdversarialTraining",
    "CatastrophicOverfittingGuard",
    "CertifiedEvaluation",
    "DataProvenance",
    "FreeAdversarialTraining",
    "RequeueOnSignal",
    "RobustEvaluation",
]
