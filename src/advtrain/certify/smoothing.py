"""Randomized smoothing: a certifiably L2-robust classifier built from any base classifier.

Reference:
    Cohen, Rosenfeld & Kolter, "Certified Adversarial Robustness via Randomized Smoothing",
    ICML 2019. The smoothed classifier is ``g(x) = argmax_c P(f(x + δ) = c)``, ``δ ~ N(0, σ²I)``.
    If the top class has probability at least ``pA_lower > 1/2``, ``g`` is constant within the L2
    ball of radius ``σ·Φ⁻¹(pA_lower)`` around ``x``. PREDICT uses a two-sided binomial test between
    the two most frequent classes (abstain when ``p > alpha``); CERTIFY picks the class from
    ``n0`` samples and bounds ``pA`` by a one-sided Clopper–Pearson interval from ``n`` fresh
    samples. Published defaults: ``n0 = 100``, ``n = 100,000``, ``alpha = 0.001``,
    ``σ ∈ {0.12, 0.25, 0.5, 1.0}``.

Beyond the reference: ``mode="sequential"`` draws the ``n`` estimation samples in rounds and stops
as soon as the answer at a requested radius is settled, with the same ``1 - alpha`` guarantee
(see :mod:`advtrain.certify.sequential`); and the ``*_batch`` helpers pack the samples of several
examples into shared forward passes.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import chain
from typing import Any, Literal

import numpy as np
import torch
from scipy.stats import binomtest
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.dropout import _DropoutNd

from advtrain.certify.sequential import (
    CONTINUE,
    SequentialTest,
    look_schedule,
    pa_lower_bound,
    radius_from_lower_bound,
)
from advtrain.generators import DeviceGenerators, SeededRandomness
from advtrain.modes import model_state_guard
from advtrain.validation import check_positive_int

Mode = Literal["standard", "sequential"]
ABSTAIN = -1

#: Predictions kept on the device before one ``bincount`` (bounds memory, avoids per-batch syncs).
_FLUSH_SAMPLES = 1 << 20


@dataclass(frozen=True)
class CertifyResult:
    """Everything CERTIFY found for one example.

    Attributes:
        prediction: The certified class, or ``-1`` (abstain).
        radius: Certified L2 radius (``0.0`` when abstaining).
        pa_lower: Lower confidence bound on the top-class probability.
        count: Estimation samples that fell in the selected class.
        n_estimation: Estimation samples drawn (``n``, or fewer when sequential stopped early).
        num_samples: Noisy forward passes in all, ``n0 + n_estimation``.
        looks: Looks at the data (1 for the standard mode).
        decision: ``"certified"`` (radius >= the requested radius, or any radius if none was
            requested), ``"not_certified"`` (radius below the requested one) or ``"abstain"``.
    """

    prediction: int
    radius: float
    pa_lower: float
    count: int
    n_estimation: int
    num_samples: int
    looks: int
    decision: str


def _check_alpha(alpha: Any) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise TypeError(f"alpha must be a float in (0, 1), got {alpha!r}")
    alpha = float(alpha)
    if not (0.0 < alpha < 1.0):
        raise ValueError(f"alpha must lie in (0, 1) (e.g. 0.001), got {alpha}")
    return alpha


def _check_sigma(sigma: Any) -> float:
    if isinstance(sigma, Tensor) and sigma.numel() == 1:
        sigma = float(sigma.item())
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)):
        raise TypeError(f"sigma must be a positive float, got {sigma!r}")
    sigma = float(sigma)
    if not math.isfinite(sigma) or sigma <= 0:
        raise ValueError(f"sigma must be a finite number > 0 (e.g. 0.25), got {sigma}")
    return sigma


def _check_radius(radius: Any) -> float:
    if radius is None:
        raise ValueError('mode="sequential" decides one radius: pass radius=r (e.g. 0.5)')
    if isinstance(radius, bool) or not isinstance(radius, (int, float)):
        raise TypeError(f"radius must be a float >= 0, got {radius!r}")
    radius = float(radius)
    if not math.isfinite(radius) or radius < 0:
        raise ValueError(f"radius must be a finite number >= 0, got {radius}")
    return radius


class Smooth(SeededRandomness):
    """The smoothed classifier ``g`` of a base classifier ``f`` (Cohen et al., ICML 2019).

    The base model is only ever run forward, under :func:`torch.inference_mode`, on noise drawn in
    batches on the model's device; class counts come from :func:`torch.bincount`. The model is
    never modified: a model in training mode that holds BatchNorm or Dropout layers is refused
    (its predictions would be random and BatchNorm would update its statistics) unless
    ``force_eval=True``, which switches it to eval mode for each call and restores every flag after.

    Inputs: ``predict``/``certify`` take one example, shaped like one input of the model
    (``(C, H, W)``); a batch of one (``(1, C, H, W)``) is accepted too. When the model has an
    ``input_shape`` attribute (as :class:`advtrain.models.SmallCNN`) it settles the question;
    otherwise a 4-D input with a leading 1 is read as a batch of one image. The ``*_batch``
    helpers take a batch ``(B, ...)``.

    Args:
        model: The base classifier, returning logits ``(batch, num_classes)``.
        num_classes: Number of classes (``>= 2``).
        sigma: Noise level σ in input units (Cohen et al.: 0.12, 0.25, 0.5, 1.0).
        seed: Seed of the noise generator (one per device); ``None`` uses torch's global RNG.
        force_eval: Run a model found in training mode in eval mode (restored after each call)
            instead of raising.

    Example:
        >>> smooth = Smooth(model.eval(), num_classes=10, sigma=0.25, seed=0)
        >>> cls, radius = smooth.certify(x, n0=100, n=100_000, alpha=0.001, batch_size=1000)
    """

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        sigma: float,
        seed: int | None = None,
        force_eval: bool = False,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.num_classes = check_positive_int(num_classes, "num_classes", minimum=2)
        self.sigma = _check_sigma(sigma)
        self._generators = DeviceGenerators(
            None if seed is None else check_positive_int(seed, "seed", minimum=0)
        )
        self.force_eval = bool(force_eval)

    # -- plumbing -------------------------------------------------------------------------------
    def reseed(self, seed: int | None) -> None:
        """Restarts the noise stream from ``seed`` (``None``: torch's global RNG)."""
        self._generators.reseed(
            None if seed is None else check_positive_int(seed, "seed", minimum=0)
        )

    @contextlib.contextmanager
    def _model_mode(self) -> Iterator[None]:
        stochastic = sorted(
            {
                type(m).__name__
                for m in self.model.modules()
                if m.training and isinstance(m, (_BatchNorm, _DropoutNd))
            }
        )
        if not stochastic:
            yield
            return
        if not self.force_eval:
            raise ValueError(
                f"the model is in training mode and has {', '.join(stochastic)} layers, so its "
                "noisy predictions are random and BatchNorm statistics would change: call "
                "model.eval() before certifying, or pass Smooth(..., force_eval=True)"
            )
        with model_state_guard(self.model, "eval"):
            yield

    def _prepare(self, x: Tensor, single: bool) -> Tensor:
        """Validates ``x`` and returns it as a batch on the model's device and dtype."""
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")
        if x.numel() == 0:
            raise ValueError(f"x is empty (shape {tuple(x.shape)})")
        if not bool(torch.isfinite(x).all()):
            raise ValueError("x contains NaN or infinite values; certify finite inputs only")
        shape = getattr(self.model, "input_shape", None)
        if single:
            if shape is not None and tuple(x.shape) == (1, *tuple(shape)):
                x = x[0]
            elif shape is not None and tuple(x.shape) != tuple(shape):
                raise ValueError(
                    f"x must be one example of shape {tuple(shape)} (or a batch of one), got "
                    f"{tuple(x.shape)}; use certify_batch/predict_batch for several examples"
                )
            elif shape is None and x.dim() == 4:
                if x.shape[0] != 1:
                    raise ValueError(
                        f"certify/predict take one example, got a batch of {x.shape[0]}; use "
                        "certify_batch/predict_batch"
                    )
                x = x[0]
            x = x.unsqueeze(0)
        elif x.dim() < 1:
            raise ValueError("x must be a batch (B, ...) for the *_batch helpers")
        ref = next(chain(self.model.parameters(), self.model.buffers()), None)
        device = ref.device if ref is not None else x.device
        dtype = ref.dtype if ref is not None and ref.is_floating_point() else x.dtype
        return x.detach().to(device=device, dtype=dtype)

    def _counts(self, x: Tensor, num: int, batch_size: int) -> np.ndarray:
        """Class counts of ``f(x_b + δ)`` over ``num`` noise draws for every example ``x_b``.

        The ``B·num`` noisy copies are laid out example after example and cut into forward
        batches of ``batch_size``, so small ``num`` still fills the batches.

        Returns:
            ``(B, num_classes)`` int64 counts.
        """
        b, c = x.shape[0], self.num_classes
        total = b * num
        device = x.device
        gen = self._generators.get(device)
        counts = torch.zeros(b * c, dtype=torch.long, device=device)
        flush = max(batch_size, (_FLUSH_SAMPLES // batch_size) * batch_size)
        buf = torch.empty(min(total, flush), dtype=torch.long, device=device)
        filled, buf_start, checked = 0, 0, False
        sample_shape = x.shape[1:]
        for start in range(0, total, batch_size):
            m = min(batch_size, total - start)
            if b == 1:
                clean = x
            else:
                clean = x.index_select(0, torch.arange(start, start + m, device=device) // num)
            noisy = torch.randn((m, *sample_shape), generator=gen, device=device, dtype=x.dtype)
            noisy.mul_(self.sigma).add_(clean)
            logits = self.model(noisy)
            if not checked:
                self._check_logits(logits, m)
                checked = True
            buf[filled : filled + m] = logits.argmax(dim=1)
            filled += m
            if filled == buf.numel() or start + m == total:
                preds = buf[:filled]
                if b > 1:
                    owner = torch.arange(buf_start, buf_start + filled, device=device) // num
                    preds = owner * c + preds
                counts += torch.bincount(preds, minlength=b * c)
                buf_start += filled
                filled = 0
        return counts.view(b, c).cpu().numpy()

    def _check_logits(self, logits: Tensor, m: int) -> None:
        if not isinstance(logits, Tensor) or logits.dim() != 2 or logits.shape[0] != m:
            shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
            raise ValueError(
                f"the model must return logits of shape (batch, num_classes), got {shape} for a "
                f"batch of {m}"
            )
        if logits.shape[1] != self.num_classes:
            raise ValueError(
                f"the model returns {logits.shape[1]} logits but Smooth was built with "
                f"num_classes={self.num_classes}; make them agree"
            )

    # -- PREDICT --------------------------------------------------------------------------------
    def predict(self, x: Tensor, n: int, alpha: float, batch_size: int) -> int:
        """Cohen et al.'s PREDICT: the smoothed prediction, or ``-1`` (abstain).

        Draws ``n`` noisy copies, takes the two most frequent classes ``cA``, ``cB`` and returns
        ``cA`` if a two-sided binomial test of ``nA`` against ``nA + nB`` at ``1/2``
        (:func:`scipy.stats.binomtest`) rejects at level ``alpha``; the probability of returning
        a class other than ``g(x)`` is then at most ``alpha``.

        Args:
            x: One example (``(C, H, W)`` or a batch of one).
            n: Noise samples (Cohen et al.: 100,000).
            alpha: Failure probability (Cohen et al.: 0.001).
            batch_size: Noisy copies per forward pass.
        """
        return int(self.predict_batch(self._prepare(x, single=True), n, alpha, batch_size)[0])

    def predict_batch(self, x: Tensor, n: int, alpha: float, batch_size: int) -> Tensor:
        """:meth:`predict` for every example of ``x`` ``(B, ...)``; returns ``(B,)`` int64."""
        n, alpha, batch_size = self._check_counts(n, alpha, batch_size)
        x = self._prepare(x, single=False)
        with self._model_mode(), torch.inference_mode():
            counts = self._counts(x, n, batch_size)
        top2 = np.argsort(-counts, axis=1, kind="stable")[:, :2]
        out = np.full(x.shape[0], ABSTAIN, dtype=np.int64)
        for i, (a, b) in enumerate(top2):
            na, nb = int(counts[i, a]), int(counts[i, b])
            if binomtest(na, na + nb, 0.5).pvalue <= alpha:
                out[i] = a
        return torch.from_numpy(out)

    # -- CERTIFY --------------------------------------------------------------------------------
    def certify(
        self,
        x: Tensor,
        n0: int,
        n: int,
        alpha: float,
        batch_size: int,
        mode: Mode = "standard",
        radius: float | None = None,
        first_look: int = 64,
        growth: float = 2.0,
    ) -> tuple[int, float]:
        """Cohen et al.'s CERTIFY: ``(class, radius)``, or ``(-1, 0.0)`` when abstaining.

        With probability at least ``1 - alpha`` (over the noise) the returned class is ``g(x)``'s
        and ``g`` is constant on the L2 ball of the returned radius. See
        :meth:`certify_detailed` for the arguments and the sequential mode.
        """
        res = self.certify_detailed(x, n0, n, alpha, batch_size, mode, radius, first_look, growth)
        return res.prediction, res.radius

    def certify_detailed(
        self,
        x: Tensor,
        n0: int,
        n: int,
        alpha: float,
        batch_size: int,
        mode: Mode = "standard",
        radius: float | None = None,
        first_look: int = 64,
        growth: float = 2.0,
    ) -> CertifyResult:
        """CERTIFY for one example, returning a :class:`CertifyResult`.

        ``mode="standard"`` (Cohen et al.): the class ``cA`` is the most frequent among ``n0``
        noisy copies; ``pA_lower`` is the one-sided ``1 - alpha`` Clopper–Pearson lower bound
        from ``n`` fresh copies; the radius is ``σ·Φ⁻¹(pA_lower)``, or abstain when
        ``pA_lower <= 1/2``.

        ``mode="sequential"`` answers "is ``radius`` certified?" with fewer samples: after
        selecting ``cA`` as above it draws the estimation samples in rounds up to the fixed looks
        :func:`~advtrain.certify.sequential.look_schedule` ``(n, first_look, growth)``
        (``first_look·growth^k``, ending at ``n``), and stops as soon as the lower bound clears
        ``Φ(radius/σ)`` (certified) or the upper bound falls below it (not certifiable). Look
        ``k`` of ``K`` uses the Clopper–Pearson bounds at a level ``alpha_k`` fixed in advance,
        ``alpha/2`` on the last look and ``alpha/(2(K-1))`` on each earlier one (Bonferroni:
        ``sum_k alpha_k = alpha``; :class:`~advtrain.certify.sequential.SequentialTest`), so all
        ``K`` lower bounds hold simultaneously with probability ``>= 1 - alpha``: the radius
        returned at the stopping look is certified with the same ``1 - alpha`` guarantee as the
        standard mode, whatever the stopping rule. The price is a slightly smaller radius when
        all ``n`` samples are needed (level ``alpha/2`` instead of ``alpha``); the gain is that
        clear-cut examples stop after a few hundred samples. The radius returned is the one
        certified at the stopping look, so for examples settled as not certifiable at
        ``radius`` it is usually smaller than the standard mode's (it may even abstain when
        ``radius`` is out of reach of ``n`` samples): use the standard mode for a whole
        accuracy-vs-radius curve, the sequential mode to decide one radius cheaply.

        Args:
            x: One example (``(C, H, W)`` or a batch of one).
            n0: Selection samples (Cohen et al.: 100).
            n: Estimation samples, the most the sequential mode draws (Cohen et al.: 100,000).
            alpha: Failure probability (Cohen et al.: 0.001).
            batch_size: Noisy copies per forward pass.
            mode: ``"standard"`` or ``"sequential"``.
            radius: The radius to decide (required for ``"sequential"``; for ``"standard"`` it
                only sets :attr:`CertifyResult.decision`).
            first_look: First look of the sequential schedule.
            growth: Ratio between consecutive looks (``> 1``).

        Raises:
            ValueError: On ``n0``/``n``/``batch_size`` < 1, ``alpha`` outside ``(0, 1)``, an
                unknown ``mode``, a missing or negative ``radius`` in sequential mode, NaN
                inputs, or a training-mode model with BatchNorm/Dropout.
        """
        x = self._prepare(x, single=True)
        return self.certify_batch(x, n0, n, alpha, batch_size, mode, radius, first_look, growth)[0]

    def certify_batch(
        self,
        x: Tensor,
        n0: int,
        n: int,
        alpha: float,
        batch_size: int,
        mode: Mode = "standard",
        radius: float | None = None,
        first_look: int = 64,
        growth: float = 2.0,
    ) -> list[CertifyResult]:
        """:meth:`certify_detailed` for every example of ``x`` ``(B, ...)``.

        The noisy copies of all (still undecided) examples share forward passes of
        ``batch_size``; each example keeps its own independent samples and guarantee.
        """
        n, alpha, batch_size = self._check_counts(n, alpha, batch_size)
        n0 = check_positive_int(n0, "n0")
        if mode not in ("standard", "sequential"):
            raise ValueError(f'mode must be "standard" or "sequential", got {mode!r}')
        target = None
        if mode == "sequential" or radius is not None:
            target = _check_radius(radius)
        first_look = check_positive_int(first_look, "first_look")
        x = self._prepare(x, single=False)
        with self._model_mode(), torch.inference_mode():
            selected = self._counts(x, n0, batch_size).argmax(axis=1)
            if mode == "standard":
                looks = (n,)
                counts = self._counts(x, n, batch_size)
                count_a = counts[np.arange(x.shape[0]), selected]
                lower = pa_lower_bound(count_a, n, alpha)
                used = np.full(x.shape[0], n)
                n_looks = np.ones(x.shape[0], dtype=np.int64)
            else:
                looks = look_schedule(n, first_look, growth)
                test = SequentialTest.for_radius(target, self.sigma, looks, alpha)  # type: ignore[arg-type]
                count_a, lower, used, n_looks = self._sequential(x, selected, test, batch_size)
        radii = radius_from_lower_bound(lower, self.sigma)
        results = []
        for i in range(x.shape[0]):
            abstain = not lower[i] > 0.5
            if abstain:
                decision = "abstain"
            elif target is None or radii[i] >= target:
                decision = "certified"
            else:
                decision = "not_certified"
            results.append(
                CertifyResult(
                    prediction=ABSTAIN if abstain else int(selected[i]),
                    radius=0.0 if abstain else float(radii[i]),
                    pa_lower=float(lower[i]),
                    count=int(count_a[i]),
                    n_estimation=int(used[i]),
                    num_samples=n0 + int(used[i]),
                    looks=int(n_looks[i]),
                    decision=decision,
                )
            )
        return results

    def _sequential(
        self, x: Tensor, selected: np.ndarray, test: SequentialTest, batch_size: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        b = x.shape[0]
        count_a = np.zeros(b, dtype=np.int64)
        lower = np.zeros(b)
        used = np.zeros(b, dtype=np.int64)
        n_looks = np.zeros(b, dtype=np.int64)
        active = np.arange(b)
        drawn = 0
        for k, n_k in enumerate(test.looks):
            counts = self._counts(x[torch.from_numpy(active).to(x.device)], n_k - drawn, batch_size)
            drawn = n_k
            count_a[active] += counts[np.arange(active.size), selected[active]]
            decision, low = test.decide(k, count_a[active])
            done = decision != CONTINUE
            settled = active[done]
            lower[settled] = low[done]
            used[settled] = n_k
            n_looks[settled] = k + 1
            active = active[~done]
            if active.size == 0:
                break
        return count_a, lower, used, n_looks

    @staticmethod
    def _check_counts(n: Any, alpha: Any, batch_size: Any) -> tuple[int, float, int]:
        return (
            check_positive_int(n, "n"),
            _check_alpha(alpha),
            check_positive_int(batch_size, "batch_size"),
        )

    def __repr__(self) -> str:
        return (
            f"Smooth(model={type(self.model).__name__}, num_classes={self.num_classes}, "
            f"sigma={self.sigma}, seed={self.seed}, force_eval={self.force_eval})"
        )


__all__ = ["ABSTAIN", "CertifyResult", "Smooth"]
