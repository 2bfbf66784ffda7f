"""Per-class outlier scores of training representations: the textbook poisoning detectors and a
robust one.

* :func:`spectral_signature_scores` — Tran, Li & Madry, "Spectral Signatures in Backdoor Attacks",
  NeurIPS 2018: centre a class's representations, take the top right singular vector, score each
  example by its squared projection. Poisons of a backdoor shift the class mean along a direction
  that dominates the spectrum once they are numerous enough.
* :func:`activation_clustering` — Chen et al., "Detecting Backdoor Attacks on Deep Neural Networks
  by Activation Clustering", 2018: reduce a class's representations to 10 dimensions, split them
  into two clusters; a poisoned class splits into a clean cluster and a smaller poison cluster
  (relative size and silhouette score tell how clearly). The paper reduces with ICA; PCA here,
  which is deterministic and what reference comparisons here used.
* :func:`robust_spectral_scores` — the spectral signature after *robust whitening*, the idea of
  Hayase et al., "SPECTRE: Defending Against Backdoor Attacks Using Robust Statistics", ICML 2021
  (without its quantum-entropy scoring): estimate the clean examples' mean and covariance with a
  robust estimator (the Minimum Covariance Determinant, Rousseeuw 1984, scikit-learn's
  ``MinCovDet``), whiten with it, then take the top direction. Whitening by the clean covariance
  makes a poison cluster stand out by many standard deviations, where the plain spectral signature
  mixes it with the class's own large variance.

Features are ``(n, d)`` float tensors; numpy/scikit-learn do the linear algebra.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

#: Dimensions the class representations are reduced to before clustering / robust whitening.
N_COMPONENTS = 10


def _as_array(features: Tensor, minimum: int = 2) -> np.ndarray:
    if not isinstance(features, Tensor) or features.dim() != 2:
        raise ValueError(
            f"features must be a 2-D tensor (examples, dimensions), got "
            f"{getattr(features, 'shape', type(features).__name__)}"
        )
    if features.shape[0] < minimum:
        raise ValueError(f"need at least {minimum} examples to score, got {features.shape[0]}")
    array = features.detach().double().cpu().numpy()
    if not np.isfinite(array).all():
        raise ValueError("features contain NaN or inf")
    return array


def _reduce(array: np.ndarray, n_components: int) -> np.ndarray:
    """PCA to ``min(n_components, n - 2, d)`` dimensions (scikit-learn, full SVD: deterministic)."""
    from sklearn.decomposition import PCA

    k = max(1, min(n_components, array.shape[0] - 2, array.shape[1]))
    return PCA(n_components=k, svd_solver="full").fit_transform(array)


def spectral_signature_scores(features: Tensor) -> Tensor:
    """Tran et al. (2018): ``<f_i - mean, v>^2`` with ``v`` the top right singular vector of the
    centred features of one class. Higher: more suspicious."""
    array = _as_array(features)
    centred = array - array.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return torch.from_numpy((centred @ vt[0]) ** 2)


@dataclass(frozen=True)
class Clusters:
    """Activation clustering's split of one class.

    Attributes:
        labels: ``(n,)`` long, 0 or 1; 1 is the smaller cluster.
        smaller_fraction: The smaller cluster's share of the class.
        silhouette: Mean silhouette coefficient of the split (-1 to 1; higher: clearer).
    """

    labels: Tensor
    smaller_fraction: float
    silhouette: float


def activation_clustering(
    features: Tensor, n_components: int = N_COMPONENTS, seed: int = 0
) -> Clusters:
    """Chen et al. (2018): PCA to ``n_components`` dimensions, 2-means (10 initialisations,
    seeded); the smaller cluster is labelled 1."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    reduced = _reduce(_as_array(features, minimum=4), n_components)
    labels = KMeans(n_clusters=2, n_init=10, random_state=seed).fit(reduced).labels_
    if (labels == 1).sum() > (labels == 0).sum():
        labels = 1 - labels
    fraction = float((labels == 1).mean())
    silhouette = float(silhouette_score(reduced, labels)) if fraction > 0 else 0.0
    return Clusters(torch.from_numpy(labels.astype(np.int64)), fraction, silhouette)


@dataclass(frozen=True)
class RobustScores:
    """The robustly whitened spectral scores of one class.

    Attributes:
        scores: ``(n,)`` squared projection on the top direction of the whitened features, in
            units of the clean examples' variance (a clean, Gaussian class has most scores below
            9: three standard deviations).
        top_eigenvalue: The whitened covariance's largest eigenvalue (about 1 for a clean,
            Gaussian class; large when a cluster of outliers shares a direction).
    """

    scores: Tensor
    top_eigenvalue: float


def robust_spectral_scores(
    features: Tensor, n_components: int = N_COMPONENTS, seed: int = 0
) -> RobustScores:
    """Spectral scores after whitening by a Minimum Covariance Determinant estimate of the clean
    examples' mean and covariance (see the module docstring)."""
    from sklearn.covariance import MinCovDet

    reduced = _reduce(_as_array(features, minimum=4), n_components)
    mcd = MinCovDet(random_state=seed).fit(reduced)
    # Whitening W with W^T W = cov^-1 (a tiny ridge keeps a degenerate estimate invertible).
    cov = mcd.covariance_ + 1e-9 * np.trace(mcd.covariance_) * np.eye(reduced.shape[1])
    whitened = np.linalg.solve(np.linalg.cholesky(cov), (reduced - mcd.location_).T).T
    values, vectors = np.linalg.eigh(np.cov(whitened, rowvar=False).reshape(reduced.shape[1], -1))
    projection = whitened @ vectors[:, -1]
    return RobustScores(torch.from_numpy(projection**2), float(values[-1]))


__all__ = [
    "N_COMPONENTS",
    "Clusters",
    "RobustScores",
    "activation_clustering",
    "robust_spectral_scores",
    "spectral_signature_scores",
]
