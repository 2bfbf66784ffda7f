"""A small, valid ``advtrain-eval`` report (schema_version 1) for the report unit tests."""

from __future__ import annotations

import copy
from typing import Any

SHA = "ab" * 32

_REPORT: dict[str, Any] = {
    "schema_version": 1,
    "kind": "evaluation",
    "data": {"name": "digits", "split": "test", "num_classes": 3, "hash_method": "tensors_sha256"},
    "clean_accuracy": 0.75,
    "robust_accuracy": {"autoattack": 0.25, "pgd-50x5": 0.5, "worst_case": 0.25},
    "counts": {"n": 4, "clean": 3, "autoattack": 1, "pgd-50x5": 2, "worst_case": 1},
    "threat_model": {"norm": "linf", "eps": 0.2, "bounds": [0.0, 1.0]},
    "n_examples": 4,
    "attacks": {
        "autoattack": {
            "target": "advtrain.attacks.AutoAttack",
            "params": {"version": "standard", "eps": 0.2},
            "accuracy": 0.25,
            "correct": 1,
            "members": [
                {"name": "apgd-ce", "accuracy_after": 0.5, "correct_after": 2},
                {"name": "square", "accuracy_after": 0.25, "correct_after": 1},
            ],
        },
        "pgd-50x5": {
            "target": "advtrain.attacks.PGD",
            "params": {"steps": 50, "restarts": 5, "eps": 0.2},
            "accuracy": 0.5,
            "correct": 2,
        },
    },
    "eps_grid": {
        "factors": [0.0, 1.0],
        "eps": [0.0, 0.2],
        "attacks": ["autoattack", "pgd-50x5"],
        "accuracy": {
            "autoattack": [0.75, 0.25],
            "pgd-50x5": [0.75, 0.5],
            "worst_case": [0.75, 0.25],
        },
    },
    "per_class": {
        "classes": [0, 1, 2],
        "support": [2, 2, 0],
        "accuracy": {"clean": [1.0, 0.5, None], "worst_case": [0.5, 0.0, None]},
    },
    "certified": {
        "summary": {"ibp @ eps=0.2": 0.0, "crown @ eps=0.2": 0.25},
        "bounds": {
            "ibp": {"supported": True, "eps": [0.2], "accuracy": [0.0], "at_threat_eps": 0.0},
            "crown": {"supported": True, "eps": [0.2], "accuracy": [0.25], "at_threat_eps": 0.25},
            "crown_ibp": {"supported": False, "reason": "bound propagation does not support X"},
        },
        "smoothing": None,
        "gap": {
            "eps": 0.2,
            "empirical": 0.25,
            "certified": 0.25,
            "certificate": "crown",
            "gap": 0.0,
        },
    },
    "sanity": {
        "flags": [
            {
                "code": "zero_gradients",
                "triggered": False,
                "message": "Input gradients are non-zero.",
                "advice": "",
                "details": {},
            },
        ],
        "triggered": [],
        "white_box_trustworthy": True,
        "warning": None,
    },
    "settings": {"seed": 0, "batch_size": 2, "n_examples": 4, "device": "cpu"},
    "checkpoint": {"path": "/x/model.pt", "sha256": SHA, "loaded_with": "weights_only"},
    "config_sha256": SHA,
    "data_sha256": SHA,
    "seed": 0,
    "timings_s": {"attacks": 1.0},
    "environment": {"advtrain": "0.1.0", "torch": "2.x", "git_commit": None, "device": "cpu"},
    "figures": {},
}


def make_report(**changes: Any) -> dict[str, Any]:
    """A deep copy of the sample report with top-level keys replaced."""
    report = copy.deepcopy(_REPORT)
    report.update(changes)
    return report
