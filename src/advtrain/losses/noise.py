"""Gaussian data augmentation: the training loss behind randomized smoothing.

Reference:
    Cohen, Rosenfeld & Kolter, "Certified Adversarial Robustness via Randomized Smoothing",
    ICML 2019: the base classifier is trained with cross-entropy on ``x + δ``,
    ``δ ~ N(0, σ²I)``, with the same σ used to certify (0.12, 0.25, 0.5 or 1.0 on CIFAR-10);
    the noisy input is *not* clipped to the image box, exactly as at certification time.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advtrain.generators import DeviceGenerators, SeededRandomness
from advtrain.losses.base import TrainingLoss, accuracy
from advtrain.threat import check_labels
from advtrain.validation import check_positive_int


class GaussianNoiseLoss(SeededRandomness, TrainingLoss):
    """``CE(f(x + δ), y)`` with ``δ ~ N(0, σ²I)`` drawn afresh for every call.

    Trains the base classifier of :class:`advtrain.certify.Smooth` (Cohen et al., ICML 2019). The
    noise is not clipped to the input box (the smoothed classifier sees unclipped noise too).
    ``sigma`` is settable, so a schedule can ramp it; ``sigma = 0`` is plain training.

    Args:
        sigma: Noise standard deviation in input units (Cohen et al.: 0.12–1.0; 0.25 default).
        seed: Seed of the loss's own noise generator (one per device, part of
            :meth:`state_dict`); ``None`` draws from torch's global RNG.

    Logs:
        ``loss/noise_ce`` (the loss) and ``acc/noisy`` (accuracy on the noisy batch), detached.

    Example:
        >>> loss_fn = GaussianNoiseLoss(sigma=0.25, seed=0)
        >>> # loss, logs = loss_fn(model, x, y); loss.backward()
    """

    def __init__(self, sigma: float = 0.25, seed: int | None = None) -> None:
        super().__init__()
        self.sigma = sigma
        self._generators = DeviceGenerators(
            None if seed is None else check_positive_int(seed, "seed", minimum=0)
        )

    @property
    def sigma(self) -> float:
        """Noise standard deviation, ``>= 0`` (schedulable)."""
        return self._sigma

    @sigma.setter
    def sigma(self, value: float) -> None:
        if isinstance(value, Tensor) and value.numel() == 1:
            value = float(value.item())
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"sigma must be a real number >= 0, got {value!r}")
        value = float(value)
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"sigma must be a finite number >= 0 (e.g. 0.25), got {value}")
        self._sigma = value

    def compute(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")
        check_labels(y, x.shape[0])
        if self.sigma > 0:
            noise = torch.randn(
                x.shape, generator=self.generator(x.device), device=x.device, dtype=x.dtype
            )
            x_noisy = x + self.sigma * noise
        else:
            x_noisy = x
        logits = self.logits(model, x_noisy, y)
        check_labels(y, x.shape[0], num_classes=logits.shape[1])
        loss = F.cross_entropy(logits, y)
        return loss, {"loss/noise_ce": loss.detach(), "acc/noisy": accuracy(logits, y)}

    def state_dict(self) -> dict[str, Any]:
        """``sigma``, the seed and the generators' states (for an exact resume)."""
        return {
            "sigma": self.sigma,
            "seed": self.seed,
            "generators": self._generators.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores :meth:`state_dict`'s output."""
        self.sigma = state.get("sigma", self.sigma)
        self.seed = state.get("seed", self.seed)
        self._generators.load_state_dict(state.get("generators", {}))

    def extra_repr(self) -> str:
        return f"sigma={self.sigma:.6g}, seed={self.seed}"


__all__ = ["GaussianNoiseLoss"]
