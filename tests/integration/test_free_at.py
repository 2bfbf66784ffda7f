"""FreeAdversarialTraining (Shafahi et al., NeurIPS 2019) in real Trainer runs on digits."""

from __future__ import annotations

from typing import Any

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.utilities.exceptions import MisconfigurationException
from torch import Tensor

from advtrain.attacks import PGD
from advtrain.callbacks import AdversarialTraining, FreeAdversarialTraining

from .test_callback_helpers import (
    EPS,
    DictClassifier,
    DictDigits,
    ManualClassifier,
    PlainClassifier,
    digits,
    one_thread,  # noqa: F401  (autouse fixture)
    robust_accuracy,
    trained,
    trainer,
)


class Probe(pl.Callback):
    """Placed before the Free-AT callback: sees delta before each step and the input gradient
    after it, before the callback consumes it."""

    def __init__(self, free: FreeAdversarialTraining) -> None:
        self.free = free
        self.deltas: list[Tensor | None] = []
        self.grads: list[Tensor] = []

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        self.deltas.append(self.free.delta)

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        x_adv = self.free._x_adv
        assert x_adv is not None and x_adv.grad is not None
        self.grads.append(x_adv.grad.clone())


def clean_batches(dm: Any, n: int, epoch: int = 0) -> list[Tensor]:
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(epoch)
    it = iter(loader)
    return [next(it)[0] for _ in range(n)]


def test_replays_each_batch_and_carries_delta_with_the_paper_update() -> None:
    pl.seed_everything(0, verbose=False)
    dm = digits()
    free = FreeAdversarialTraining(eps=EPS, replays=4)
    probe = Probe(free)
    module = PlainClassifier(record=100)
    tr = trainer([probe, free], max_epochs=1, limit_train_batches=3)
    tr.fit(module, datamodule=dm)
    assert tr.num_training_batches == 12 and tr.global_step == 12  # every replay is a step
    clean = clean_batches(dm, 3)
    assert len(module.seen) == 12
    assert torch.equal(module.seen[0], clean[0]), "delta starts at zero"
    for k, seen in enumerate(module.seen):
        x = clean[k // 4]
        delta = probe.deltas[k] if probe.deltas[k] is not None else torch.zeros_like(x)
        assert torch.equal(seen, (x + delta).clamp(0, 1)), k  # trains on x + delta, in the box
        if k + 1 < 12:  # delta <- clip(delta + eps * sign(grad_x), -eps, eps)
            expected = (delta + EPS * probe.grads[k].sign()).clamp(-EPS, EPS)
            assert torch.allclose(probe.deltas[k + 1], expected, atol=1e-7), k
    # carried over from one minibatch to the next, not reset
    assert float(probe.deltas[4].abs().max()) == pytest.approx(EPS)
    assert "training_step" not in vars(module)


def test_free_at_at_the_cost_of_natural_training_gives_robustness() -> None:
    pl.seed_everything(0, verbose=False)
    module = PlainClassifier()
    # 8 epochs of natural training = 2 epochs of 4 replays (same number of gradient steps)
    tr = trainer([FreeAdversarialTraining(eps=EPS, replays=4)], max_epochs=2)
    tr.fit(module, datamodule=digits())
    _, _, robust_std = trained("standard", 8)
    assert tr.global_step == 8 * 20
    assert robust_accuracy(module) >= robust_std + 0.1


def test_divide_max_epochs_keeps_the_budget_of_steps() -> None:
    free = FreeAdversarialTraining(eps=EPS, replays=4, divide_max_epochs=True)
    tr = trainer([free], max_epochs=6, limit_train_batches=2)
    tr.fit(PlainClassifier(), datamodule=digits())
    assert tr.max_epochs == 2  # ceil(6 / 4)
    assert tr.global_step == 2 * 2 * 4


def test_a_smaller_last_batch_uses_the_leading_rows_of_delta() -> None:
    pl.seed_everything(0, verbose=False)
    dm = digits(batch_size=500)  # 1257 training digits: batches of 500, 500, 257
    free = FreeAdversarialTraining(eps=EPS, replays=2)
    probe = Probe(free)
    trainer([probe, free], max_epochs=1).fit(PlainClassifier(), datamodule=dm)
    assert [g.shape[0] for g in probe.grads] == [500, 500, 500, 500, 257, 257]
    before, after = probe.deltas[-1], free.delta
    assert before is not None and after is not None and after.shape[0] == 500
    assert torch.equal(after[257:], before[257:]), "rows the small batch did not use are kept"
    assert not torch.equal(after[:257], before[:257])
    assert float(after.abs().max()) <= EPS + 1e-7


class CorruptGradient(pl.Callback):
    """Placed before the Free-AT callback: on the last step, makes the input gradient of
    example 0 infinite, one entry of example 1 NaN and one of example 2 -inf (what a float16
    overflow step leaves behind)."""

    def __init__(self, free: FreeAdversarialTraining) -> None:
        self.free = free
        self.before: Tensor | None = None

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step != 4:  # the last of 4 replays (counted after its step)
            return
        x_adv = self.free._x_adv
        assert x_adv is not None and x_adv.grad is not None and self.free.delta is not None
        self.before = self.free.delta.clone()
        x_adv.grad[0] = float("inf")
        x_adv.grad[1, 0, 0, 0] = float("nan")
        x_adv.grad[2, 0, 3, 5] = float("-inf")


def test_examples_with_non_finite_input_gradients_keep_their_perturbation() -> None:
    pl.seed_everything(0, verbose=False)
    free = FreeAdversarialTraining(eps=EPS, replays=4)
    corrupt = CorruptGradient(free)
    trainer([corrupt, free], max_epochs=1, limit_train_batches=1).fit(
        PlainClassifier(), datamodule=digits()
    )
    before, after = corrupt.before, free.delta
    assert before is not None and after is not None
    assert bool(torch.isfinite(after).all())
    assert torch.equal(after[:3], before[:3])  # the three corrupted examples did not move
    for row in range(3, after.shape[0]):  # every other example took its step
        assert not torch.equal(after[row], before[row]), row
    assert float(after.abs().max()) <= EPS + 1e-7


def test_dict_batches() -> None:
    pl.seed_everything(0, verbose=False)
    dm = DictDigits(batch_size=64)
    dm.setup("fit")
    module = DictClassifier(record=2)
    free = FreeAdversarialTraining(eps=EPS, replays=2, input_key="image", target_key="label")
    trainer([free], max_epochs=1, limit_train_batches=1).fit(module, datamodule=dm)
    x_all, _ = dm.train_set.tensors  # type: ignore[union-attr]
    assert torch.equal(module.indices[0], module.indices[1])  # the same minibatch, replayed
    assert torch.equal(module.seen[0], x_all[module.indices[0]])
    diff = (module.seen[1] - x_all[module.indices[1]]).abs()
    assert 0 < float(diff.max()) <= EPS + 1e-6


class DetachingModule(PlainClassifier):
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return F.cross_entropy(self(batch[0].detach()), batch[1])


def test_a_step_that_detaches_its_inputs_is_reported() -> None:
    free = FreeAdversarialTraining(eps=EPS, replays=2)
    with pytest.raises(MisconfigurationException, match="no gradient on the inputs"):
        trainer([free], max_epochs=1, limit_train_batches=1).fit(
            DetachingModule(), datamodule=digits()
        )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"eps": -0.1}, "eps must be >= 0"),
        ({"replays": 0}, "replays must be >= 1"),
        ({"norm": "l1"}, "norm must be one of"),
        ({"step_size": 0.0}, "step_size"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(MisconfigurationException, match=match):
        FreeAdversarialTraining(**kwargs)


def test_only_one_adversarial_training_callback() -> None:
    callbacks = [AdversarialTraining(PGD(eps=EPS, steps=1)), FreeAdversarialTraining(eps=EPS)]
    with pytest.raises(MisconfigurationException, match="already wrapped"):
        trainer(callbacks, max_epochs=1, limit_train_batches=1).fit(
            PlainClassifier(), datamodule=digits()
        )


def test_replay_in_step_trains_exactly_as_the_step_per_replay_mode() -> None:
    """The same optimizer steps and delta updates, m per Lightning step instead of one."""
    results = {}
    for in_step in (False, True):
        pl.seed_everything(0, verbose=False)
        free = FreeAdversarialTraining(eps=EPS, replays=4, replay_in_step=in_step)
        module = PlainClassifier(record=100)
        tr = trainer([free], max_epochs=2, limit_train_batches=3)
        tr.fit(module, datamodule=digits())
        results[in_step] = (tr.global_step, module, free.delta)
        assert "optimizer_step" not in vars(module) and "training_step" not in vars(module)
    (steps_out, out, delta_out), (steps_in, inside, delta_in) = results[False], results[True]
    assert steps_out == 2 * 3 * 4 and steps_in == 2 * 3  # global_step counts minibatches
    assert len(inside.seen) == len(out.seen) == 24  # every replay ran the user's step
    for a, b in zip(out.seen, inside.seen, strict=True):
        assert torch.equal(a, b)  # the same x + delta at every replay
    assert delta_in is not None and delta_out is not None and torch.equal(delta_in, delta_out)
    for p_out, p_in in zip(out.parameters(), inside.parameters(), strict=True):
        assert torch.equal(p_out, p_in)


@pytest.mark.parametrize(
    ("make", "kwargs", "match"),
    [
        (ManualClassifier, {}, "manual optimization"),
        (PlainClassifier, {"accumulate_grad_batches": 2}, "accumulate_grad_batches=2"),
    ],
)
def test_replay_in_step_rejects_what_it_cannot_do(make, kwargs, match) -> None:
    free = FreeAdversarialTraining(eps=EPS, replays=2, replay_in_step=True)
    with pytest.raises(MisconfigurationException, match=match):
        trainer([free], max_epochs=1, limit_train_batches=2, **kwargs).fit(
            make(), datamodule=digits()
        )
