"""Seeded random generators, one per device, for the objects that draw random numbers.

An attack's random starts, a smoothed classifier's noise and Gaussian data augmentation each draw
from a private ``torch.Generator`` seeded by the object's ``seed``, so that a fixed seed gives
identical results and a resumed run draws what an uninterrupted one would. A generator lives on
one device; :class:`DeviceGenerators` makes one per device on first use and saves their states
for checkpoints.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor


class DeviceGenerators:
    """One ``torch.Generator`` per device, each seeded with :attr:`seed` when first asked for.

    Args:
        seed: The generators' seed; ``None`` means no generator (callers draw from torch's
            global RNG).

    Attributes:
        seed: The seed of generators made from now on (see :meth:`reseed` to restart those
            already made).
    """

    def __init__(self, seed: int | None = None) -> None:
        self.seed = seed
        self._by_device: dict[torch.device, torch.Generator] = {}

    def get(self, device: torch.device | str) -> torch.Generator | None:
        """The generator on ``device`` (``None`` when unseeded: torch's global RNG).

        ``"cuda"`` without an index means the current CUDA device.
        """
        if self.seed is None:
            return None
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        gen = self._by_device.get(device)
        if gen is None:
            gen = torch.Generator(device=device)
            gen.manual_seed(self.seed)
            self._by_device[device] = gen
        return gen

    def reseed(self, seed: int | None) -> None:
        """Restarts every stream from ``seed``.

        Generators already made are re-seeded in place (the same stream as a new one, without the
        cost of making a CUDA generator again); ``None`` drops them all.
        """
        self.seed = seed
        if seed is None:
            self._by_device.clear()
            return
        for gen in self._by_device.values():
            gen.manual_seed(seed)

    def state_dict(self) -> dict[str, Tensor]:
        """The state of every generator made so far, by device name (for an exact resume)."""
        return {str(d): g.get_state() for d, g in self._by_device.items()}

    def load_state_dict(self, states: Mapping[str, Tensor]) -> None:
        """Replaces the generators by those of :meth:`state_dict` (under the current seed)."""
        self._by_device.clear()
        for device, state in states.items():
            gen = self.get(torch.device(device))
            if gen is not None:
                gen.set_state(state)


class SeededRandomness:
    """Mixin of the objects that draw random numbers from their own seeded generators (attacks,
    :class:`~advtrain.certify.Smooth`, :class:`~advtrain.losses.GaussianNoiseLoss`): a ``seed``
    attribute and one generator per device, kept in ``self._generators``."""

    _generators: DeviceGenerators

    @property
    def seed(self) -> int | None:
        """Seed of the generators (``None``: torch's global RNG)."""
        return self._generators.seed

    @seed.setter
    def seed(self, value: int | None) -> None:
        self._generators.seed = value

    def generator(self, device: torch.device) -> torch.Generator | None:
        """The generator on ``device`` (``None`` when unseeded: torch's global RNG)."""
        return self._generators.get(device)


__all__ = ["DeviceGenerators", "SeededRandomness"]
