"""advtrain.losses."""

from advtrain.losses.adversarial import AdversarialLoss
from advtrain.losses.base import TrainingLoss
from advtrain.losses.certified import CROWNIBPLoss, IBPLoss
from advtrain.losses.mart import MARTLoss
from advtrain.losses.noise import GaussianNoiseLoss
from advtrain.losses.trades import TRADESLoss

__all__ = [
    "AdversarialLoss",
    "CROWNIBPLoss",
    "GaussianNoiseLoss",
    "IBPLoss",
    "MARTLoss",
    "TRADESLoss",
    "TrainingLoss",
]
