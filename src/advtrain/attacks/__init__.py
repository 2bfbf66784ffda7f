"""Adversarial attacks: ``attack(model, x, y) -> x_adv`` with the guarantees of :mod:`.base`."""

from advtrain.attacks.apgd import APGD
from advtrain.attacks.autoattack import AutoAttack, AutoAttackResult
from advtrain.attacks.base import Attack, model_state_guard
from advtrain.attacks.checks import SanityFlag, check_model, check_results, run_sanity_checks
from advtrain.attacks.fab import FAB
from advtrain.attacks.pgd import FGSM, PGD
from advtrain.attacks.square import Square
from advtrain.attacks.trades import TRADESAttack

__all__ = [
    "APGD",
    "FAB",
    "FGSM",
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
