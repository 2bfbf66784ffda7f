"""Adversarial attacks: ``attack(model, x, y) -> x_adv`` with the guarantees of :mod:`.base`."""

from typing import Any

from advtrain.attacks.apgd import APGD
from advtrain.attacks.autoattack import AutoAttack, AutoAttackResult
from advtrain.attacks.base import Attack
from advtrain.attacks.fab import FAB
from advtrain.attacks.fmn import FMN
from advtrain.attacks.pgd import FGSM, PGD
from advtrain.attacks.square import Square
from advtrain.attacks.trades import TRADESAttack
from advtrain.lazy import lazy_attribute
from advtrain.modes import model_state_guard

__all__ = [
    "APGD",
    "FAB",
    "FGSM",
    "FMN",
    "PGD",
    "Attack",
    "AutoAttack",
    "AutoAttackResult",
    "SanityFlag",
    "Square",
    "TRADESAttack",
    "check_model",
    "check_results",
    "model_state_guard",
    "run_sanity_checks",
]

#: Names that moved to :mod:`advtrain.evaluation` (diagnostics, not attacks), still importable here.
_MOVED = {
    "SanityFlag": "advtrain.evaluation.sanity",
    "check_model": "advtrain.evaluation.sanity",
    "check_results": "advtrain.evaluation.sanity_results",
    "run_sanity_checks": "advtrain.evaluation.sanity_results",
}


def __getattr__(name: str) -> Any:
    # imported on first use: the evaluation package imports the attacks
    return lazy_attribute(__name__, name, _MOVED)
