"""Where an attack call's random numbers come from: a ``torch.Generator``, or a stream per example.

Training draws an attack's random starts from a seeded ``torch.Generator`` (fast, and reseeded
per step by the callbacks). An evaluation must not let a number depend on how the test set was
batched: with one generator per call, the noise an example receives depends on which examples
share its batch, so the same model, seed and data gave 33.1% with one ``batch_size`` and 32.8%
with another. :class:`Draws` gives the attacks one interface for both:

* **generator mode** (``Draws(device, generator)``): exactly the ``torch.rand``/``randn``/
  ``randint`` calls of a ``torch.Generator`` (or torch's global RNG), in call order;
* **per-example mode** (``Draws.per_example(seed, ids, device)``): counter-based random numbers,
  each value a hash of ``(seed, example id, draw key, element)`` (Salmon et al., "Parallel random
  numbers: as easy as 1, 2, 3", SC 2011, the idea behind Philox), so the numbers an example gets
  depend only on its id and on where in the attack they are drawn (``key``: the restart, the
  iteration...), never on the batch, its size or the other examples in it.

The hash is a 32-bit avalanche mix (lowbias32) computed with int64 tensor arithmetic on any
device; uniform numbers carry 24 random bits, normal ones come from the Box-Muller transform.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

_MASK = 0xFFFFFFFF
_GOLDEN = 0x9E3779B9


def _mul32(x: Tensor, c: int) -> Tensor:
    """``(x * c) mod 2**32`` for ``x`` in ``[0, 2**32)``, without int64 overflow."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + ((x * hi) & 0xFFFF) * 65536) & _MASK


def hash32(x: Tensor) -> Tensor:
    """A 32-bit avalanche hash (lowbias32) of an int64 tensor of values in ``[0, 2**32)``."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _hash_int(value: int) -> int:
    """:func:`hash32` of one Python int (the same arithmetic, without building tensors: keys are
    hashed on every draw)."""
    x = value & _MASK
    x ^= x >> 16
    x = (x * 0x7FEB352D) & _MASK
    x ^= x >> 15
    x = (x * 0x846CA68B) & _MASK
    return x ^ (x >> 16)


def key_hash(key: Sequence[int]) -> int:
    """One 32-bit value for a draw key ``(site, restart, iteration, ...)``."""
    h = 0x2545F491
    for part in key:
        h = _hash_int(h ^ _hash_int(int(part) + _GOLDEN))
    return h


class Draws:
    """The random numbers of one attack call; see the module docstring.

    Args:
        device: Where the numbers are made.
        generator: The ``torch.Generator`` of generator mode (``None``: torch's global RNG).
    """

    def __init__(self, device: torch.device, generator: torch.Generator | None = None) -> None:
        self.device = torch.device(device)
        self.generator = generator
        self.seed = 0
        self.ids: Tensor | None = None
        self.prefix: tuple[int, ...] = ()
        # Parts of the hash that do not change between draws: per id, per element count.
        self._id_hash: Tensor | None = None
        self._element_hash: dict[int, Tensor] = {}

    @classmethod
    def per_example(
        cls, seed: int, ids: Tensor, device: torch.device, prefix: tuple[int, ...] = ()
    ) -> Draws:
        """Per-example mode: ``ids`` (one int per row) name the examples of the batch."""
        draws = cls(device)
        draws.seed = int(seed) & _MASK
        draws.ids = ids.to(device=device, dtype=torch.int64)
        draws.prefix = prefix
        return draws

    @property
    def keyed(self) -> bool:
        """Whether the numbers are per example (keyed) rather than from a generator."""
        return self.ids is not None

    def narrow(self, rows: Tensor, *key: int) -> Draws:
        """The draws of a sub-batch (``rows`` of this batch), under a longer key (e.g. the
        restart); in generator mode, ``self``."""
        if self.ids is None:
            return self
        return Draws.per_example(
            self.seed, self.ids[rows.to(self.ids.device)], self.device, (*self.prefix, *key)
        )

    # -- the keyed core -------------------------------------------------------------------------
    def _bits(self, shape: Sequence[int], key: Sequence[int]) -> Tensor:
        """Uniform 32-bit values ``(rows, *shape[1:])`` for ``key``, as int64."""
        assert self.ids is not None
        rows = int(shape[0])
        if rows != self.ids.numel():
            raise ValueError(f"{rows} rows drawn for a batch of {self.ids.numel()} examples")
        per_row = math.prod(int(s) for s in shape[1:])
        if self._id_hash is None:
            self._id_hash = hash32((self.ids * _GOLDEN + self.seed) & _MASK)
        base = hash32(self._id_hash ^ key_hash((*self.prefix, *key)))
        elements = self._element_hash.get(per_row)
        if elements is None:
            elements = hash32((torch.arange(per_row, device=self.device) + _GOLDEN) & _MASK)
            self._element_hash[per_row] = elements
        return hash32(base.view(-1, 1) ^ elements.view(1, -1)).view(*[int(s) for s in shape])

    def _uniform(self, shape: Sequence[int], dtype: torch.dtype, key: Sequence[int]) -> Tensor:
        return ((self._bits(shape, key) >> 8).to(torch.float64) * 2.0**-24).to(dtype)

    # -- the draws ------------------------------------------------------------------------------
    def rand(self, shape: Sequence[int], dtype: torch.dtype, key: Sequence[int] = ()) -> Tensor:
        """Uniform on ``[0, 1)``."""
        if self.ids is None:
            return torch.rand(
                tuple(shape), generator=self.generator, device=self.device, dtype=dtype
            )
        return self._uniform(shape, dtype, key)

    def randn(self, shape: Sequence[int], dtype: torch.dtype, key: Sequence[int] = ()) -> Tensor:
        """Standard normal."""
        if self.ids is None:
            return torch.randn(
                tuple(shape), generator=self.generator, device=self.device, dtype=dtype
            )
        u1 = 1.0 - self._uniform(shape, torch.float64, (*key, 1))  # in (0, 1]
        u2 = self._uniform(shape, torch.float64, (*key, 2))
        return (torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)).to(dtype)

    def randint(self, low: int, high: int, shape: Sequence[int], key: Sequence[int] = ()) -> Tensor:
        """Integers uniform on ``[low, high)`` (int64)."""
        if self.ids is None:
            return torch.randint(
                low, high, tuple(shape), generator=self.generator, device=self.device
            )
        span = high - low
        if span > 2**24:
            raise ValueError(f"per-example randint supports ranges up to 2**24, got {span}")
        u = self._uniform(shape, torch.float64, key)
        return (u * span).floor().to(torch.int64).clamp_(max=span - 1) + low

    def coin(self, shape: Sequence[int], key: Sequence[int] = ()) -> Tensor:
        """Fair coin flips (bool)."""
        if self.ids is None:
            return torch.empty(tuple(shape), dtype=torch.bool, device=self.device).bernoulli_(
                0.5, generator=self.generator
            )
        return (self._bits(shape, key) >> 31) == 1


__all__ = ["Draws", "hash32", "key_hash"]
