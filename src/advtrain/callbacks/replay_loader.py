"""``ReplayLoader``: every training batch ``m`` times in a row, for Free-AT's step-per-replay mode.

Shafahi et al., "Adversarial Training for Free!", NeurIPS 2019, replay each minibatch ``m`` times;
when every replay is one Lightning step (manual optimization, gradient accumulation),
:class:`~advtrain.callbacks.FreeAdversarialTraining` wraps the training loader in this.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from advtrain.lit import adapter
from advtrain.validation import check_positive_int

if TYPE_CHECKING:
    from lightning.pytorch import Trainer


class ReplayLoader:
    """Yields every batch of a Lightning ``CombinedLoader`` ``replays`` times in a row.

    Lightning still sees (and prepares: distributed sampler, worker seeding, epoch setting) the
    user's own loaders, which this object combines exactly as a plain ``CombinedLoader`` would;
    only the iteration repeats each combined batch. ``limit_train_batches`` therefore counts
    distinct minibatches, and the number of steps of an epoch is ``replays`` times that.

    A mixin: :meth:`wrap` combines it with the ``CombinedLoader`` of the Trainer's Lightning
    package (the fit loop recognises its own class with ``isinstance``).
    """

    _classes: ClassVar[dict[type, type]] = {}

    def __init__(self, iterables: Any, replays: int, mode: str = "max_size_cycle") -> None:
        super().__init__(iterables, mode)  # type: ignore[call-arg]
        self.replays = check_positive_int(replays, "replays")
        self._current: Any = None
        self._left = 0

    @classmethod
    def wrap(cls, loader: Any, replays: int, trainer: Trainer) -> Any:
        """Wraps what a ``train_dataloader`` returned (a loader, a collection, a CombinedLoader)
        for ``trainer``."""
        if isinstance(loader, ReplayLoader):
            return loader
        combined = adapter.combined_loader_class(trainer)
        replay_class = cls._classes.get(combined)
        if replay_class is None:
            replay_class = type("ReplayLoader", (cls, combined), {"__module__": __name__})
            cls._classes[combined] = replay_class
        if isinstance(loader, combined):
            return replay_class(loader.iterables, replays, adapter.combined_loader_mode(loader))
        return replay_class(loader, replays)

    def __iter__(self) -> ReplayLoader:
        super().__iter__()  # type: ignore[misc]
        self._current = None
        self._left = 0
        return self

    def __next__(self) -> Any:
        if self._left == 0:
            self._current = super().__next__()  # type: ignore[misc]
            self._left = self.replays
        self._left -= 1
        return self._current

    def __len__(self) -> int:
        return super().__len__() * self.replays  # type: ignore[misc, no-any-return]


__all__ = ["ReplayLoader"]
