"""advtrain.certify."""

from advtrain.certify.bounds import crown_bounds, interval_bounds, margin_spec, verified
from advtrain.certify.runner import CertificationReport, certify_dataset
from advtrain.certify.sequential import SequentialTest, look_schedule
from advtrain.certify.smoothing import ABSTAIN, CertifyResult, Smooth

__all__ = [
    "ABSTAIN",
    "CertificationReport",
    "CertifyResult",
    "SequentialTest",
    "Smooth",
    "certify_dataset",
    "crown_bounds",
    "interval_bounds",
    "look_schedule",
    "margin_spec",
    "verified",
]
