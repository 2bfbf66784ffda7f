"""The poisoning audit: which classes of a training set hold a backdoor's poisons, and which
examples.

Per class (:func:`audit_poisoning`):

1. **Candidate cluster** — :func:`~advtrain.audit.detectors.robust_spectral_scores` on the
   class's representations (the penultimate layer by default): the examples more than
   ``threshold`` (default 25: five robust standard deviations) along the top direction of the
   robustly whitened features. Poisons of a backdoor form such a cluster (they share the trigger);
   so do some natural sub-populations (a second way of writing a digit).
2. **Is the cluster label-consistent?** — the test that tells the two apart, in the spirit of
   activation clustering's exclusionary reclassification (Chen et al. 2018): a linear probe
   (multinomial logistic regression on another representation, the input of the first
   ``nn.Linear`` by default) trained on every other training example predicts the cluster's
   classes. Poisons are examples of *other* classes carrying a trigger: the probe gives almost none
   of them the cluster's label (``agreement``) and spreads them over many classes (``spread``: the
   effective number of predicted classes, ``exp(entropy)``, as a share of the other classes).
   A natural sub-population is either recognised as its class or confused with a few classes.
3. **Verdict** — ``"poisoned"`` when the cluster's agreement is at most ``max_agreement`` and its
   spread at least ``min_spread``; ``"review"`` when only the agreement is that low (a
   label-inconsistent cluster concentrated on a few classes: a source-specific backdoor, or
   mislabelled data); ``"clean"`` otherwise; ``"too_few"`` below ``min_examples`` (the statistics
   mean nothing). The flagged examples are the clusters of the ``"poisoned"`` classes.

The textbook detectors run alongside for comparison (spectral signatures: the top scores,
activation clustering: the smaller cluster's share and silhouette), reported per class.
Settings (threshold 25, agreement 0.05, spread 2/3) were chosen on the digits training split
(BENCHMARKS.md); the test split was never looked at.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from advtrain.audit.detectors import (
    activation_clustering,
    robust_spectral_scores,
    spectral_signature_scores,
)

VERDICTS = ("poisoned", "review", "clean", "too_few")
#: Examples of the rest of the training set the probe is fitted on, at most (a stratified
#: random subset beyond that: the probe's cost stays bounded on large data sets).
MAX_PROBE_EXAMPLES = 20_000


@dataclass
class ClassAudit:
    """One class's findings (see the module docstring)."""

    label: int
    n: int
    verdict: str
    cluster: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    top_eigenvalue: float = math.nan
    agreement: float = math.nan
    spread: float = math.nan
    ac_smaller_fraction: float = math.nan
    ac_silhouette: float = math.nan

    def summary(self) -> dict[str, Any]:
        """JSON-ready numbers (the cluster as its size)."""
        return {
            "label": self.label,
            "n": self.n,
            "verdict": self.verdict,
            "cluster_size": int(self.cluster.numel()),
            "top_eigenvalue": _num(self.top_eigenvalue),
            "probe_agreement": _num(self.agreement),
            "probe_spread": _num(self.spread),
            "activation_clustering": {
                "smaller_fraction": _num(self.ac_smaller_fraction),
                "silhouette": _num(self.ac_silhouette),
            },
        }


def _num(value: float) -> float | None:
    return None if not math.isfinite(value) else round(float(value), 6)


@dataclass
class PoisonAuditResult:
    """The audit of one training set.

    Attributes:
        classes: One :class:`ClassAudit` per class present.
        flagged: Indices (into the audited examples) of the examples flagged as poisons.
        scores: ``(n,)`` robust spectral score of every example within its class (NaN where the
            class had too few examples).
        spectral_scores: ``(n,)`` the plain spectral-signature score, for comparison.
        settings: The thresholds used.
    """

    classes: list[ClassAudit]
    flagged: Tensor
    scores: Tensor
    spectral_scores: Tensor
    settings: dict[str, Any]

    @property
    def poisoned_classes(self) -> list[int]:
        """Labels whose verdict is ``"poisoned"``."""
        return [c.label for c in self.classes if c.verdict == "poisoned"]


def _probe(
    probe_features: np.ndarray, labels: np.ndarray, cluster: np.ndarray, seed: int
) -> np.ndarray:
    """Predictions for ``cluster`` of a logistic regression fitted on every other example."""
    from sklearn.linear_model import LogisticRegression

    rest = np.setdiff1d(np.arange(labels.shape[0]), cluster)
    if rest.shape[0] > MAX_PROBE_EXAMPLES:
        rest = np.random.default_rng(seed).choice(rest, MAX_PROBE_EXAMPLES, replace=False)
    if np.unique(labels[rest]).shape[0] < 2:
        return labels[cluster]  # nothing to contrast with: call it consistent
    # Unscaled on purpose: standardising blows up features that are almost constant on clean
    # data (a dark image corner), which a trigger then dominates (tried on the digits split).
    probe = LogisticRegression(max_iter=1000)
    probe.fit(probe_features[rest], labels[rest])
    return probe.predict(probe_features[cluster])


def _check_inputs(features: Tensor, probe_features: Tensor, labels: Tensor) -> None:
    for name, value in (("features", features), ("probe_features", probe_features)):
        if not isinstance(value, Tensor) or value.dim() != 2:
            raise ValueError(f"{name} must be a 2-D tensor (examples, dimensions)")
    if not isinstance(labels, Tensor) or labels.dim() != 1 or labels.dtype.is_floating_point:
        raise ValueError("labels must be a 1-D integer tensor, one class index per example")
    n = labels.shape[0]
    if features.shape[0] != n or probe_features.shape[0] != n:
        raise ValueError(
            f"features ({features.shape[0]}), probe_features ({probe_features.shape[0]}) and "
            f"labels ({n}) must describe the same examples"
        )


def audit_poisoning(
    features: Tensor,
    labels: Tensor,
    probe_features: Tensor,
    *,
    threshold: float = 25.0,
    max_agreement: float = 0.05,
    min_spread: float = 2 / 3,
    min_examples: int = 20,
    seed: int = 0,
) -> PoisonAuditResult:
    """Audits a training set for backdoor poisons (see the module docstring).

    Args:
        features: ``(n, d)`` representations clustered per class (the penultimate layer).
        labels: ``(n,)`` the training labels.
        probe_features: ``(n, d')`` representations the label-consistency probe reads (the
            input of the first ``nn.Linear``).
        threshold: Robust spectral score above which an example joins its class's cluster.
        max_agreement: A cluster the probe gives its own label at most this often is
            label-inconsistent.
        min_spread: ... and ``"poisoned"`` when its predictions spread over at least this share
            of the other classes (effective number of classes / (classes - 1)).
        min_examples: Classes with fewer examples get ``"too_few"``.
        seed: Seeds the robust estimator, the clustering and any probe subsampling.

    Returns:
        :class:`PoisonAuditResult`.
    """
    _check_inputs(features, probe_features, labels)
    if not (threshold > 0 and 0 <= max_agreement < 1 and 0 < min_spread <= 1):
        raise ValueError(
            "threshold must be > 0, max_agreement in [0, 1), min_spread in (0, 1]; got "
            f"{threshold}, {max_agreement}, {min_spread}"
        )
    if isinstance(min_examples, bool) or not isinstance(min_examples, int) or min_examples < 4:
        raise ValueError(f"min_examples must be an integer >= 4, got {min_examples!r}")
    y = labels.cpu().numpy()
    probe = probe_features.detach().double().cpu().numpy()
    classes = sorted(int(c) for c in np.unique(y))
    n_classes = max(len(classes), 2)
    scores = torch.full((y.shape[0],), math.nan, dtype=torch.float64)
    spectral = torch.full((y.shape[0],), math.nan, dtype=torch.float64)
    audits, flagged = [], []
    for c in classes:
        members = np.nonzero(y == c)[0]
        if members.shape[0] < min_examples:
            audits.append(ClassAudit(c, int(members.shape[0]), "too_few"))
            continue
        own = features[torch.from_numpy(members)]
        robust = robust_spectral_scores(own, seed=seed)
        scores[members] = robust.scores
        spectral[members] = spectral_signature_scores(own)
        clusters = activation_clustering(own, seed=seed)
        cluster = members[(robust.scores > threshold).numpy()]
        audit = ClassAudit(
            c,
            int(members.shape[0]),
            "clean",
            torch.from_numpy(cluster),
            robust.top_eigenvalue,
            ac_smaller_fraction=clusters.smaller_fraction,
            ac_silhouette=clusters.silhouette,
        )
        if cluster.shape[0] > 0:
            predicted = _probe(probe, y, cluster, seed)
            audit.agreement = float((predicted == c).mean())
            share = np.bincount(predicted[predicted != c], minlength=max(classes) + 1)
            if share.sum() > 0:
                p = share[share > 0] / share.sum()
                audit.spread = float(np.exp(-(p * np.log(p)).sum()) / (n_classes - 1))
            else:
                audit.spread = 0.0
            if audit.agreement <= max_agreement:
                audit.verdict = "poisoned" if audit.spread >= min_spread else "review"
        if audit.verdict == "poisoned":
            flagged.append(cluster)
        audits.append(audit)
    flagged_idx = np.sort(np.concatenate(flagged)) if flagged else np.zeros(0, dtype=np.int64)
    settings = {
        "threshold": threshold,
        "max_agreement": max_agreement,
        "min_spread": min_spread,
        "min_examples": min_examples,
        "seed": seed,
    }
    return PoisonAuditResult(
        audits, torch.from_numpy(flagged_idx.astype(np.int64)), scores, spectral, settings
    )


__all__ = ["MAX_PROBE_EXAMPLES", "VERDICTS", "ClassAudit", "PoisonAuditResult", "audit_poisoning"]
