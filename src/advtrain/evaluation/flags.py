"""Sanity flags about the evaluation's circumstances, and the sanity section's verdict.

The model and result checks live in :mod:`advtrain.evaluation.sanity` and
:mod:`advtrain.evaluation.sanity_results`; the flags here are about what was evaluated: test data
that also trained the model, a clean accuracy far below what the training run logged, resumed
state that failed its integrity check, an untrained model. Each is a dictionary of the same shape
as :meth:`SanityFlag.to_dict <advtrain.evaluation.sanity.SanityFlag.to_dict>`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

#: Sanity flags that mean gradient-based (white-box) robust accuracy cannot be trusted.
WHITE_BOX_UNTRUSTED = (
    "randomized_model",
    "probability_outputs",
    "zero_gradients",
    "black_box_beats_white_box",
    "model_checks_failed",
)
#: The report's sanity warning when the checks were switched off.
NOT_CHECKED = (
    "the sanity checks were not run (sanity.enabled=false): nothing checked these white-box "
    "numbers for gradient masking, randomness or saturated outputs"
)


def flag(code: str, message: str, advice: str, details: Mapping[str, Any]) -> dict[str, Any]:
    """A triggered flag."""
    return {
        "code": code,
        "triggered": True,
        "message": message,
        "advice": advice,
        "details": dict(details),
    }


def untrained_flag() -> dict[str, Any]:
    """A run that took no optimizer step (``trainer.max_epochs=0``, an empty training split): its
    report describes the initial weights."""
    return flag(
        "untrained_model",
        "the run took no optimizer step: this report evaluates the untrained, randomly "
        "initialised weights",
        "train for at least one epoch (trainer.max_epochs >= 1) on a non-empty split, or resume "
        "from a checkpoint that has trained",
        {"optimizer_steps": 0},
    )


def rejected_state_flag(count: int, authenticated: bool) -> dict[str, Any]:
    """Stored units of an interrupted evaluation that failed their integrity check."""
    kind = "HMAC" if authenticated else "SHA-256"
    return flag(
        "resumed_state_rejected",
        f"{count} stored unit(s) of the interrupted evaluation failed their {kind} check "
        "(edited, copied from another evaluation, or damaged) and were recomputed: the numbers "
        "here are computed, not read back",
        "find out who or what changed output_dir/eval_state; with ledger_key= set, units are "
        "authenticated by a key only the evaluator holds",
        {"rejected": count, "authenticated": authenticated},
    )


def contamination_flag(record: Mapping[str, Any]) -> dict[str, Any] | None:
    """Evaluated examples that also occur in the training data (``None`` where none do)."""
    if not record.get("overlap"):
        return None
    return flag(
        "test_data_in_training_data",
        f"{record['overlap']} of the {record['n']} evaluated examples also occur in the training "
        f"split ({record['train_examples']} examples compared): the model was trained on them, "
        "so every accuracy here overstates it",
        "evaluate a split disjoint from the training data (data.split=, or the split the training "
        "run held out)",
        record,
    )


def logged_accuracy_flags(
    clean_acc: float, logged: Mapping[str, float], tolerance: float = 0.10
) -> list[dict[str, Any]]:
    """A clean accuracy far below what the checkpoint's own run logged (wrong data, split,
    normalisation or architecture)."""
    return [
        flag(
            "clean_accuracy_below_training_log",
            f"clean accuracy {clean_acc:.1%} is far below the {monitor} {score:.1%} the "
            "checkpoint's own run logged",
            "check that the data is the run's (split, normalisation: data.normalization=) and "
            "that model= is its architecture",
            {"monitor": monitor, "logged": score, "clean": clean_acc},
        )
        for monitor, score in logged.items()
        if clean_acc < score - tolerance
    ]


def white_box_warning(flags: Sequence[Mapping[str, Any]]) -> str | None:
    """The report's warning where a flag says white-box numbers cannot be trusted."""
    bad = [f["code"] for f in flags if f["triggered"] and f["code"] in WHITE_BOX_UNTRUSTED]
    if not bad:
        return None
    return (
        f"Sanity checks fired ({', '.join(bad)}): the gradients that white-box attacks (PGD, "
        "APGD, FAB) follow are masked, random or saturated, so their robust accuracy overstates "
        "the model's robustness, possibly by far. Treat these numbers as upper bounds; rely on "
        "the worst case including black-box attacks, adaptive attacks, and certified accuracy."
    )


def sanity_section(
    flags: Sequence[Mapping[str, Any]], checked: bool, model_check_examples: int
) -> dict[str, Any]:
    """The report's ``sanity`` section: every flag, which fired, and the white-box verdict
    (``None`` where the checks were switched off: not checked is not trustworthy)."""
    out = [dict(f) for f in flags]
    for f in out:
        f["white_box_untrusted"] = bool(f["triggered"] and f["code"] in WHITE_BOX_UNTRUSTED)
    warning = white_box_warning(out)
    return {
        "flags": out,
        "triggered": [f["code"] for f in out if f["triggered"]],
        "white_box_trustworthy": (warning is None) if checked else None,
        "warning": warning if checked else NOT_CHECKED,
        "model_check_examples": model_check_examples,
    }


__all__ = [
    "NOT_CHECKED",
    "WHITE_BOX_UNTRUSTED",
    "contamination_flag",
    "flag",
    "logged_accuracy_flags",
    "rejected_state_flag",
    "sanity_section",
    "untrained_flag",
    "white_box_warning",
]
