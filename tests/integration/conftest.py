"""Shared helpers for integration tests: shrunken configs of the real CLI."""

from __future__ import annotations

FAST = [
    "trainer.max_epochs=2",
    "++trainer.limit_train_batches=4",
    "trainer.enable_progress_bar=false",
    "evaluation.n_examples=48",
    "evaluation.attacks.pgd-50x5.steps=5",
    "evaluation.attacks.pgd-50x5.restarts=2",
    "evaluation.attacks.autoattack.version=fast",
    "evaluation.curve_attack.steps=3",
    "callbacks.robust_evaluation.n_examples=32",
    "callbacks.robust_evaluation.attack.steps=3",
    "attack.steps=2",
]
