"""A training DataLoader that resumes mid-epoch exactly where a checkpoint left it.

Lightning restores a mid-epoch checkpoint (one written by a preemption handler, or by
``ModelCheckpoint(every_n_train_steps=...)``) by continuing the epoch's batch count, but a plain
``DataLoader`` starts the epoch's order from its first batch again: the resumed run sees the
first batches twice and never the last ones, so it does not end where an uninterrupted run ends.
A loader with ``state_dict``/``load_state_dict`` (Lightning's ``_Stateful`` protocol) is told the
saved position instead; this one skips the batches the checkpoint had already trained on.

The position saved is the number of batches Lightning had *processed* in the epoch, read from the
trainer when the checkpoint is written (the loader itself cannot know it: Lightning pre-fetches a
batch ahead), and the epoch comes from the sampler's ``epoch`` (Lightning calls ``set_epoch``; the
distributed sampler Lightning wraps around ours under DDP carries it too, and the skip happens
after the per-rank split, so every rank skips its own consumed batches).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from torch.utils.data import DataLoader


def _samplers(loader: DataLoader) -> list[object]:
    """The loader's sampler and its batch sampler's sampler (whichever Lightning gave an epoch)."""
    return [loader.sampler, getattr(loader.batch_sampler, "sampler", None)]


def _sampler_epoch(loader: DataLoader) -> int | None:
    """The epoch set on the loader's sampler (or its batch sampler's), if it has one."""
    for sampler in _samplers(loader):
        epoch = getattr(sampler, "epoch", None)
        if epoch is not None:
            return int(epoch)
    return None


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` whose position within an epoch is saved in and restored from checkpoints.

    Args:
        *args: As for :class:`torch.utils.data.DataLoader`; the sampler must have an ``epoch``
            attribute set by ``set_epoch`` (advtrain's ``EpochSeededSampler`` or torch's
            ``DistributedSampler``), so that a position is tied to the epoch's order.
        batches_done: Returns how many batches of the current epoch training has processed
            (the data module reads Lightning's progress counters); ``None`` saves no position.
        **kwargs: As for :class:`torch.utils.data.DataLoader`.
    """

    def __init__(
        self, *args: Any, batches_done: Callable[[], int] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.batches_done = batches_done
        self._resume_epoch: int | None = None
        self._resume_batches = 0

    def state_dict(self) -> dict[str, int]:
        """The epoch and the number of its batches already trained on."""
        done = int(self.batches_done()) if self.batches_done is not None else 0
        epoch = _sampler_epoch(self)
        return {"epoch": -1 if epoch is None else epoch, "batches_done": done}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Arranges for the saved epoch's iteration to start after its trained batches.

        Raises:
            ValueError: When the state does not come from this loader's :meth:`state_dict`.
        """
        if not {"epoch", "batches_done"} <= set(state_dict):
            raise ValueError(
                "ResumableDataLoader.load_state_dict expects the keys 'epoch' and 'batches_done' "
                f"(from ResumableDataLoader.state_dict); got {sorted(state_dict)}"
            )
        epoch, done = int(state_dict["epoch"]), int(state_dict["batches_done"])
        if epoch < 0 or done <= 0 or done >= len(self):
            # A position at an epoch boundary: the next epoch starts from its first batch anyway.
            self._resume_epoch, self._resume_batches = None, 0
            return
        self._resume_epoch, self._resume_batches = epoch, done
        # Lightning creates the restored epoch's iterator right after this call, before it sets
        # the epoch on the sampler again: set it here so that iterator has the epoch's order.
        for sampler in _samplers(self):
            set_epoch = getattr(sampler, "set_epoch", None)
            if callable(set_epoch):
                set_epoch(epoch)

    def __iter__(self) -> Iterator[Any]:
        iterator = super().__iter__()
        epoch = _sampler_epoch(self)
        if self._resume_epoch is None or epoch is None:
            return iterator
        if epoch != self._resume_epoch:
            if epoch > self._resume_epoch:
                # A later epoch: the saved position no longer applies. (An earlier one is
                # Lightning iterating before it has set the restored epoch on the sampler.)
                self._resume_epoch, self._resume_batches = None, 0
            return iterator
        # Lightning may create the epoch's iterator more than once while it sets up; each one
        # starts after the trained batches. The skipped batches are drawn, not just their
        # indices, so random transforms draw from their generators as in an uninterrupted run.
        for _ in range(self._resume_batches):
            next(iterator)
        return iterator


__all__ = ["ResumableDataLoader"]
