"""Moved: the sanity checks are part of the evaluation pipeline.

Kept so that ``from advtrain.attacks.checks import ...`` keeps working; new code imports from
:mod:`advtrain.evaluation.sanity` (model checks) and :mod:`advtrain.evaluation.sanity_results`
(result checks).
"""

from advtrain.evaluation.sanity import (
    BLACK_BOX_BEATS_WHITE_BOX,
    EPS_ZERO_NOT_CLEAN,
    NON_MONOTONE_EPS_CURVE,
    PROBABILITY_OUTPUTS,
    RANDOMIZED_MODEL,
    ZERO_GRADIENTS,
    SanityFlag,
    check_gradients,
    check_model,
    check_probability_outputs,
    check_randomized,
    format_flags,
    triggered,
)
from advtrain.evaluation.sanity_results import (
    check_black_box,
    check_eps_curve,
    check_eps_zero,
    check_results,
    run_sanity_checks,
)

__all__ = [
    "BLACK_BOX_BEATS_WHITE_BOX",
    "EPS_ZERO_NOT_CLEAN",
    "NON_MONOTONE_EPS_CURVE",
    "PROBABILITY_OUTPUTS",
    "RANDOMIZED_MODEL",
    "ZERO_GRADIENTS",
    "SanityFlag",
    "check_black_box",
    "check_eps_curve",
    "check_eps_zero",
    "check_gradients",
    "check_model",
    "check_probability_outputs",
    "check_randomized",
    "check_results",
    "format_flags",
    "run_sanity_checks",
    "triggered",
]
