"""FreeAdversarialTraining (Shafahi et al., NeurIPS 2019) in real Trainer runs on digits."""

from __future__ import annotations

from typing import Any

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.profilers import SimpleProfiler
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
    free = FreeAdversarialTraining(eps=EPS, replays=4, replay_in_step=False)
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
    assert tr.global_step == 2 * 20  # by default the replays run inside each Lightning step
    assert robust_accuracy(module) >= robust_std + 0.1


def test_divide_max_epochs_keeps_the_budget_of_steps() -> None:
    free = FreeAdversarialTraining(eps=EPS, replays=4, divide_max_epochs=True)
    tr = trainer([free], max_epochs=6, limit_train_batches=2)
    tr.fit(PlainClassifier(), datamodule=digits())
    assert tr.max_epochs == 2  # ceil(6 / 4)
    assert tr.global_step == 2 * 2  # minibatches: each took 4 optimizer steps


def test_a_smaller_last_batch_uses_the_leading_rows_of_delta() -> None:
    pl.seed_everything(0, verbose=False)
    dm = digits(batch_size=500)  # 1257 training digits: batches of 500, 500, 257
    free = FreeAdversarialTraining(eps=EPS, replays=2, replay_in_step=False)
    probe = Probe(free)
    trainer([probe, free], max_epochs=1).fit(PlainClassifier(), datamodule=dm)
    assert [g.shape[0] for g in probe.grads] == [500, 500, 500, 500, 257, 257]
    before, after = probe.deltas[-1], free.delta
    assert before is not None and after is not None and after.shape[0] == 500
    assert torch.equal(after[257:], before[257:]), "rows the small batch did not use are kept"
    assert not torch.equal(after[:257], before[:257])
    assert float(after.abs().max()) <= EPS + 1e-7


class CorruptGradient(pl.Callback):
    """Placed before the Free-AT callback: after the last replay's backward pass, makes the input
    gradient of example 0 infinite, one entry of example 1 NaN and one of example 2 -inf (what a
    float16 overflow step leaves behind)."""

    def __init__(self, free: FreeAdversarialTraining) -> None:
        self.free = free
        self.before: Tensor | None = None
        self.backward_passes = 0

    def on_after_backward(self, trainer: pl.Trainer, *args: Any) -> None:
        self.backward_passes += 1
        if self.backward_passes != 4:  # the last of 4 replays
            return
        x_adv = self.free._x_adv
        assert x_adv is not None and x_adv.grad is not None and self.free.delta is not None
        self.before = self.free.delta.clone()
        x_adv.grad[0] = float("inf")
        x_adv.grad[1, 0, 0, 0] = float("nan")
        x_adv.grad[2, 0, 3, 5] = float("-inf")


@pytest.mark.parametrize("in_step", [False, True], ids=["step_per_replay", "replay_in_step"])
def test_examples_with_non_finite_input_gradients_keep_their_perturbation(in_step: bool) -> None:
    pl.seed_everything(0, verbose=False)
    free = FreeAdversarialTraining(eps=EPS, replays=4, replay_in_step=in_step)
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


@pytest.mark.parametrize(
    ("batch_size", "batches"),
    [(64, 3), (500, 3)],  # 500: a smaller last batch (1257 digits = 500 + 500 + 257)
)
def test_replay_in_step_trains_exactly_as_the_step_per_replay_mode(
    batch_size: int, batches: int
) -> None:
    """The same optimizer steps and delta updates, m per Lightning step instead of one."""
    results = {}
    for in_step in (False, True):
        pl.seed_everything(0, verbose=False)
        free = FreeAdversarialTraining(eps=EPS, replays=4, replay_in_step=in_step)
        module = PlainClassifier(record=100)
        tr = trainer([free], max_epochs=2, limit_train_batches=batches)
        tr.fit(module, datamodule=digits(batch_size=batch_size))
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


class HookCounter(pl.Callback):
    """Counts the optimization hooks a replay must call, whichever closure runs it."""

    HOOKS = ("on_before_zero_grad", "on_before_backward", "on_after_backward")

    def __init__(self) -> None:
        self.counts: dict[str, int] = dict.fromkeys((*self.HOOKS, "on_before_optimizer_step"), 0)

    def on_before_zero_grad(self, *args: Any) -> None:
        self.counts["on_before_zero_grad"] += 1

    def on_before_backward(self, *args: Any) -> None:
        self.counts["on_before_backward"] += 1

    def on_after_backward(self, *args: Any) -> None:
        self.counts["on_after_backward"] += 1

    def on_before_optimizer_step(self, *args: Any) -> None:
        self.counts["on_before_optimizer_step"] += 1


class CountingClassifier(PlainClassifier):
    """Overrides ``optimizer_zero_grad`` (counted), logs one per training step, and returns
    ``None`` (a skipped step) from every ``skip_every``-th step."""

    def __init__(self, skip_every: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.skip_every = skip_every
        self.steps = 0
        self.zero_grads = 0

    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer: Any) -> None:
        self.zero_grads += 1
        optimizer.zero_grad()

    def training_step(self, batch: Any, batch_idx: int) -> Tensor | None:  # type: ignore[override]
        self.steps += 1
        self.log("steps", 1.0, on_step=False, on_epoch=True, reduce_fx="sum")
        if self.skip_every and self.steps % self.skip_every == 0:
            return None
        return super().training_step(batch, batch_idx)


def test_replay_in_step_calls_every_hook_and_logs_at_every_replay() -> None:
    """The replays before a minibatch's last (the replay closure) call the same hooks as
    Lightning's closure: 3 replays x 2 minibatches x 2 epochs = 12 of each."""
    pl.seed_everything(0, verbose=False)
    counter = HookCounter()
    module = CountingClassifier()
    free = FreeAdversarialTraining(eps=EPS, replays=3, replay_in_step=True)
    tr = trainer([free, counter], max_epochs=2, limit_train_batches=2)
    tr.fit(module, datamodule=digits())
    assert tr.global_step == 4
    assert counter.counts == dict.fromkeys(counter.counts, 12)
    assert module.zero_grads == 12
    assert tr.callback_metrics["steps"].item() == 6  # the last epoch: 2 minibatches x 3 replays
    assert torch.isfinite(tr.callback_metrics["train/loss"])


def test_replay_in_step_skips_steps_that_return_none_like_lightning() -> None:
    """A step returning None (every 5th: at every position among the replays) is skipped
    exactly as Lightning skips it when every replay is its own step."""
    results = {}
    for in_step in (False, True):
        pl.seed_everything(0, verbose=False)
        module = CountingClassifier(skip_every=5)
        free = FreeAdversarialTraining(eps=EPS, replays=3, replay_in_step=in_step)
        tr = trainer([free], max_epochs=2, limit_train_batches=5)
        tr.fit(module, datamodule=digits())
        results[in_step] = (module, free.delta)
    (out, delta_out), (inside, delta_in) = results[False], results[True]
    assert out.steps == inside.steps == 2 * 5 * 3
    assert delta_in is not None and delta_out is not None and torch.equal(delta_in, delta_out)
    for p_out, p_in in zip(out.parameters(), inside.parameters(), strict=True):
        assert torch.equal(p_out, p_in)


def test_replay_in_step_under_a_profiler_profiles_every_replay() -> None:
    """With a profiler, every replay takes Lightning's closure (the profile counts them all),
    and training is the same as without one."""
    weights = []
    for profiler in (None, SimpleProfiler()):
        pl.seed_everything(0, verbose=False)
        module = PlainClassifier()
        free = FreeAdversarialTraining(eps=EPS, replays=3, replay_in_step=True)
        trainer([free], max_epochs=1, limit_train_batches=4, profiler=profiler).fit(
            module, datamodule=digits()
        )
        weights.append([p.detach().clone() for p in module.parameters()])
    assert isinstance(profiler, SimpleProfiler)
    steps = [k for k in profiler.recorded_durations if k.endswith("Strategy.training_step")]
    assert len(steps) == 1 and len(profiler.recorded_durations[steps[0]]) == 4 * 3
    for a, b in zip(*weights, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("make", "kwargs", "in_step"),
    [
        (PlainClassifier, {}, True),
        (ManualClassifier, {}, False),
        (PlainClassifier, {"accumulate_grad_batches": 2}, False),
    ],
    ids=["automatic", "manual", "accumulation"],
)
def test_by_default_the_replays_run_inside_the_step_where_they_can(
    make: Any, kwargs: dict[str, Any], in_step: bool
) -> None:
    free = FreeAdversarialTraining(eps=EPS, replays=2)
    module = make(record=10)
    tr = trainer([free], max_epochs=1, limit_train_batches=2, **kwargs)
    tr.fit(module, datamodule=digits())
    assert tr.num_training_batches == (2 if in_step else 2 * 2)  # replayed by the loader
    assert len(module.seen) == 4, "every replay ran the user's step"
    assert free.delta is not None and float(free.delta.abs().max()) == pytest.approx(EPS)
    assert free.replay_in_step is None  # the setting stays "choose", for the next fit
