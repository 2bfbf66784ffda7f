"""Shared helpers for integration tests: shrunken configs of the real CLI."""

from __future__ import annotations

FAST = [
    "evaluation=standard",
    "trainer.max_epochs=2",
    "++trainer.limit_train_batches=4",
    "trainer.enable_progress_bar=false",
    "evaluation.n_examples=48",
    "evaluation.attacks.pgd-50x5.steps=5",
    "evaluation.attacks.pgd-50x5.restarts=2",
    "evaluation.attacks.autoattack.version=fast",
    "evaluation.attacks.apgd-ce.steps=3",
    "callbacks.robust_evaluation.n_examples=32",
    "callbacks.robust_evaluation.attack.steps=3",
    "attack.steps=2",
]

# One epoch of two batches and the smallest evaluation: for tests about plumbing (sweeps, the
# cluster launcher), not about the numbers.
TINY = [
    *(o for o in FAST if not o.startswith("trainer.max_epochs")),
    "trainer.max_epochs=1",
    "++trainer.limit_train_batches=2",
    "++trainer.limit_val_batches=1",
    "evaluation.n_examples=24",
    "evaluation.eps_grid.factors=[0.0,1.0]",
    "attack.steps=1",
]
