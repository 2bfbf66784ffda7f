"""Audits of the training data beyond evasion: backdoor poisoning (and, with
:mod:`advtrain.provenance`, which data trained the model).

Pure PyTorch with numpy/scikit-learn; no Lightning (the :class:`advtrain.callbacks.PoisonAudit`
callback runs :func:`audit_poisoning` after ``Trainer.fit``).
"""

from advtrain.audit.detectors import (
    Clusters,
    RobustScores,
    activation_clustering,
    robust_spectral_scores,
    spectral_signature_scores,
)
from advtrain.audit.features import find_layer, layer_inputs
from advtrain.audit.poison import ClassAudit, PoisonAuditResult, audit_poisoning

__all__ = [
    "ClassAudit",
    "Clusters",
    "PoisonAuditResult",
    "RobustScores",
    "activation_clustering",
    "audit_poisoning",
    "find_layer",
    "layer_inputs",
    "robust_spectral_scores",
    "spectral_signature_scores",
]
