"""``FreeAdversarialTraining``: adversarial training at the cost of natural training.

Shafahi, Najibi, Ghiasi, Xu, Dickerson, Studer, Davis, Taylor & Goldstein, "Adversarial Training
for Free!", NeurIPS 2019. Every minibatch is replayed ``m`` times in a row; each replay trains on
``x + delta`` and its single backward pass yields both the parameter gradient (the optimizer takes
a step) and the input gradient, which updates the perturbation
``delta <- clip(delta + eps·sign(grad_x), -eps, eps)``. ``delta`` is carried over from replay to
replay and from one minibatch to the next. Since each minibatch is seen ``m`` times, the number of
epochs is divided by ``m`` to keep the cost of natural training (paper: m=8 on CIFAR-10, eps
8/255, step eps; 85.96% clean / 46.33% PGD-20).

Lightning mechanics (unmodified LightningModule). The wrapped ``training_step`` hands the user's
own ``training_step`` the batch with its inputs replaced by ``x + delta`` (clipped to the input
box), a fresh leaf tensor that requires grad; after each replay's backward pass the callback reads
that tensor's ``.grad`` and updates ``delta``. Two modes schedule the ``m`` replays
(``replay_in_step``; by default the first where it applies, else the second):

**Replays inside one Lightning step** (automatic optimization, ``accumulate_grad_batches=1``). The
module's ``optimizer_step`` hook is wrapped to run the optimizer step (through Lightning's
optimizer, strategy and precision plugin: loss scaling, gradient clipping, DDP) ``m`` times; each
runs the wrapped ``training_step`` and its backward, and ``delta`` is updated in
``on_after_backward``. Lightning's loop runs once per minibatch rather than once per replay,
which is what a hand-written Free-AT ``training_step`` with manual optimization costs. The price:
``trainer.global_step``, step-interval learning-rate schedulers, ``max_steps`` and on-step logs
count minibatches (each of which takes ``m`` optimizer steps), and gradient accumulation is not
supported (Lightning calls ``optimizer_step`` only at accumulation boundaries).

The last replay of a minibatch runs Lightning's own closure. The ``m - 1`` before it run a replay
closure that takes the path of a hand-written manual-optimization step: the training step through
the strategy (DDP, autocast; ``self.log`` works as in ``training_step``), ``optimizer_zero_grad``,
and the strategy's backward (``on_before_backward`` / ``on_after_backward``). It calls the
``on_before_zero_grad`` hooks and a module's own ``optimizer_zero_grad`` where they are
overridden, and skips Lightning's dispatch of those that are not (no-ops); it does not advance
Lightning's zero-grad progress counters (bookkeeping only). With a profiler on the Trainer every
replay takes Lightning's closure, so the profile counts all of them.

**One Lightning step per replay** (any module; manual optimization, gradient accumulation). The
training loader is wrapped so that it yields each batch ``m`` times; every replay is an ordinary
Lightning training step (optimizer step, schedulers, logging, gradient accumulation, DDP and its
distributed sampler all work unchanged), an epoch has ``m`` times as many steps, and ``delta`` is
updated in ``on_train_batch_end``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from lightning_utilities.core.rank_zero import rank_zero_info
from torch import Tensor

from advtrain.callbacks.batch import Key, replace_inputs, split_batch
from advtrain.callbacks.inputs import (
    InputSpace,
    NormalizationArg,
    warn_if_bounds_look_normalised,
)
from advtrain.callbacks.replay_loader import ReplayLoader
from advtrain.callbacks.step_wrapper import (
    check_not_wrapped,
    unwrap_training_step,
    wrap_training_step,
)
from advtrain.lit import adapter
from advtrain.lit.adapter import Callback, MisconfigurationException
from advtrain.normalization import AUTO
from advtrain.threat import OutOfBoundsError, ThreatModel, check_input_batch
from advtrain.validation import check_positive_int

if TYPE_CHECKING:
    from lightning.pytorch import LightningModule, Trainer


FREE_NORMS: tuple[str, ...] = ("linf", "l2")


class FreeAdversarialTraining(Callback):
    """Free adversarial training ("Adversarial Training for Free!", Shafahi et al., NeurIPS 2019).

    Works with an unmodified LightningModule whose ``training_step`` computes its loss from the
    batch's inputs (so the input gradient exists after backward). Divide the number of epochs by
    ``replays`` to keep natural training's cost (the paper's rule; ``divide_max_epochs=True``
    does it for you), e.g. ``max_epochs = budget / m``.

    Example:
        >>> cb = FreeAdversarialTraining(eps=8 / 255, replays=8)  # the paper's CIFAR-10 setting
        >>> # Trainer(max_epochs=205 // 8, callbacks=[cb]).fit(module, datamodule)

    Args:
        eps: Radius of the perturbation ball, in input units (paper: 8/255 on CIFAR-10).
        replays: How many times each minibatch is replayed, ``m`` (paper: 8 on CIFAR-10;
            4 is a common choice on smaller problems).
        norm: ``"linf"`` (the paper: sign steps, delta clipped to the cube) or ``"l2"``
            (normalised steps, delta projected onto the ball).
        bounds: ``(low, high)`` of valid inputs; the trained input ``x + delta`` is clipped to it
            (``delta`` itself only to the ball, as in the paper).
        step_size: Step of the ``delta`` update; default ``eps`` (the paper).
        input_key: Where the inputs are in a batch: an index for tuples/lists, a key for dicts.
        target_key: Where the labels are (only checked for presence; the user's step uses them).
        divide_max_epochs: Divide the Trainer's ``max_epochs`` by ``replays`` (rounded up) at the
            start of ``fit``, so a configuration written for natural or PGD training keeps its
            budget of gradient steps. Off by default: pass ``max_epochs = budget / m`` yourself.
        normalization: The normalisation the data applies: ``"auto"`` (default: a torchvision
            ``Normalize`` found in the data pipeline, else none), ``None`` (inputs are pixels),
            or ``(mean, std)``; ``delta``, ``eps`` and ``bounds`` are in pixel units and the
            module's step receives normalised inputs.
        replay_in_step: Run the ``m`` replays of a minibatch inside one Lightning step (see the
            module docstring): the same optimizer steps and perturbation updates, without
            Lightning's per-step loop ``m`` times per minibatch; ``global_step`` then counts
            minibatches. Needs automatic optimization and ``accumulate_grad_batches=1``.
            ``False``: one Lightning step per replay. ``None`` (default): inside one step where
            the module and Trainer allow it, else one step per replay (logged at ``fit``).

    Raises:
        MisconfigurationException: On a bad argument, another callback already wrapping the
            training step, or a training step whose loss does not depend on the inputs.
    """

    def __init__(
        self,
        eps: float = 8 / 255,
        replays: int = 4,
        norm: str = "linf",
        bounds: tuple[float, float] = (0.0, 1.0),
        step_size: float | None = None,
        input_key: Key = 0,
        target_key: Key = 1,
        divide_max_epochs: bool = False,
        replay_in_step: bool | None = None,
        normalization: NormalizationArg = AUTO,
    ) -> None:
        super().__init__()
        self.space = InputSpace("FreeAdversarialTraining", normalization)
        try:
            if isinstance(norm, str) and norm.lower() not in FREE_NORMS:
                raise ValueError(f"norm must be one of {list(FREE_NORMS)}, got {norm!r}")
            self.threat = ThreatModel(norm=norm, eps=eps, bounds=tuple(bounds))  # type: ignore[arg-type]
            self.replays = check_positive_int(replays, "replays")
            if step_size is not None:
                step_size = float(step_size)
                if not step_size > 0 or not math.isfinite(step_size):
                    raise ValueError(f"step_size must be a finite number > 0, got {step_size}")
        except (TypeError, ValueError) as err:
            raise MisconfigurationException(f"FreeAdversarialTraining: {err}") from None
        self._step_size = step_size
        self.input_key = input_key
        self.target_key = target_key
        self.divide_max_epochs = bool(divide_max_epochs)
        self.replay_in_step = None if replay_in_step is None else bool(replay_in_step)
        self._in_step = bool(replay_in_step)  # the mode of the current fit
        self._original_optimizer_step: Any = None
        self._step_args: tuple[Any, int] | None = None  # (batch, batch_idx) of the current step
        self._zero_grad_hooks: tuple[bool, bool] = (True, True)  # (on_before_zero_grad, module's)
        self._delta: Tensor | None = None
        self._x_adv: Tensor | None = None
        self._original_step: Any = None
        self._module: LightningModule | None = None
        self._source: Any = None
        self._checked_inputs = False
        self._divided: tuple[int, int] | None = None  # (id(trainer), max_epochs after division)

    @property
    def eps(self) -> float:
        """Radius of the ball."""
        return self.threat.eps

    @property
    def norm(self) -> str:
        """The threat model's norm."""
        return self.threat.norm

    @property
    def step_size(self) -> float:
        """Step of the ``delta`` update (``eps`` unless set)."""
        return self._step_size if self._step_size is not None else self.threat.eps

    @property
    def delta(self) -> Tensor | None:
        """The carried perturbation (a copy), ``None`` before the first step."""
        return None if self._delta is None else self._delta.detach().clone()

    def final_threat(self, trainer: Trainer | None = None) -> ThreatModel:
        """The threat model trained against (for evaluation callbacks)."""
        return self.threat

    # -- lifecycle ------------------------------------------------------------------------------
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        check_not_wrapped(pl_module)  # before the data source is patched
        warn_if_bounds_look_normalised("FreeAdversarialTraining", self.threat.bounds)
        source = adapter.training_data_source(trainer)
        if source is None:
            raise MisconfigurationException(
                "FreeAdversarialTraining could not find the Trainer's training data source; "
                "this version of Lightning is not supported"
            )
        in_step = self.replay_in_step
        if in_step is None:
            in_step = pl_module.automatic_optimization and trainer.accumulate_grad_batches == 1
            how = (
                "inside one Lightning step (global_step counts minibatches)"
                if in_step
                else "as one Lightning step each (manual optimization or accumulation)"
            )
            rank_zero_info(f"FreeAdversarialTraining: the {self.replays} replays run {how}")
        self._in_step = in_step
        if in_step:
            self._check_in_step(trainer, pl_module)
        else:
            replays = self.replays
            original_dataloader = source.dataloader

            def dataloader() -> Any:
                return ReplayLoader.wrap(original_dataloader(), replays, trainer)

            source.dataloader = dataloader
            self._source = source

        self._original_step = wrap_training_step(pl_module, self._training_step)
        self._module = pl_module
        if in_step:
            original = pl_module.optimizer_step
            self._original_optimizer_step = original
            replays = self.replays

            def optimizer_step(
                epoch: int,
                batch_idx: int,
                optimizer: Any,
                optimizer_closure: Any = None,
                *args: Any,
                **kwargs: Any,
            ) -> Any:
                # Each call of a closure (training step and backward) is one replay; Lightning's
                # own closure runs the last one, so its result is the step's output.
                replay = self._replay_closure(trainer, epoch, batch_idx, optimizer)
                if replay is None or optimizer_closure is None:
                    replay = optimizer_closure
                for _ in range(replays - 1):
                    original(epoch, batch_idx, optimizer, replay, *args, **kwargs)
                return original(epoch, batch_idx, optimizer, optimizer_closure, *args, **kwargs)

            pl_module.optimizer_step = optimizer_step  # type: ignore[method-assign]

        if self.divide_max_epochs:
            self._divide_max_epochs(trainer)

    @staticmethod
    def _check_in_step(trainer: Trainer, pl_module: LightningModule) -> None:
        if not pl_module.automatic_optimization:
            raise MisconfigurationException(
                "FreeAdversarialTraining(replay_in_step=True) replays inside Lightning's automatic "
                "optimizer step; this module uses manual optimization: use replay_in_step=False"
            )
        if trainer.accumulate_grad_batches != 1:
            raise MisconfigurationException(
                "FreeAdversarialTraining(replay_in_step=True) cannot be combined with "
                f"accumulate_grad_batches={trainer.accumulate_grad_batches} (Lightning steps the "
                "optimizer only at accumulation boundaries): use replay_in_step=False"
            )

    def _divide_max_epochs(self, trainer: Trainer) -> None:
        current = trainer.fit_loop.max_epochs
        if current is None or current <= 0:
            return
        if self._divided is not None and self._divided == (id(trainer), current):
            return  # this Trainer's epochs are already divided (a second fit)
        divided = max(1, math.ceil(current / self.replays))
        trainer.fit_loop.max_epochs = divided
        self._divided = (id(trainer), divided)
        rank_zero_info(
            f"FreeAdversarialTraining: max_epochs {current} -> {divided} (each batch is replayed "
            f"{self.replays} times)"
        )

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if self._original_step is not None:
            unwrap_training_step(pl_module)
        if self._original_optimizer_step is not None and "optimizer_step" in vars(pl_module):
            del pl_module.optimizer_step
        self._original_optimizer_step = None
        self._step_args = None
        if self._source is not None and "dataloader" in vars(self._source):
            del self._source.dataloader
        self._original_step = None
        self._module = None
        self._source = None
        self._x_adv = None

    # -- per step -------------------------------------------------------------------------------
    def _current_delta(self, x: Tensor) -> Tensor:
        """The carried perturbation for a batch like ``x`` (resized if the batch size changed)."""
        delta = self._delta
        if delta is not None and delta.shape == x.shape and delta.device == x.device:
            return delta  # the common case (a full batch like the last): no resizing or copy
        if delta is None or delta.shape[1:] != x.shape[1:]:
            delta = torch.zeros_like(x, dtype=torch.float32)
        delta = delta.to(x.device)
        if delta.shape[0] < x.shape[0]:  # a larger batch: new rows start at zero
            pad = torch.zeros((x.shape[0] - delta.shape[0], *x.shape[1:]), device=x.device)
            delta = torch.cat([delta, pad.to(delta.dtype)])
        self._delta = delta
        return delta[: x.shape[0]]

    def _training_step(self, batch: Any, batch_idx: int, *args: Any, **kwargs: Any) -> Any:
        assert self._module is not None and self._original_step is not None
        x_raw, _ = split_batch(batch, self.input_key, self.target_key)
        x = self.space.to_pixels(x_raw)
        if not self._checked_inputs:
            try:
                check_input_batch(x, self.threat.bounds)
            except OutOfBoundsError as err:
                raise self.space.explain(err, x_raw) from None
            except (TypeError, ValueError) as err:
                raise MisconfigurationException(f"FreeAdversarialTraining: {err}") from None
            self._checked_inputs = True
        # No autograd graph is built here (neither the inputs nor delta require grad). delta is
        # kept inside the ball by its update, so only the box remains to enforce.
        delta = self._current_delta(x)
        if delta.dtype != x.dtype:
            delta = delta.to(x.dtype)
        if x.requires_grad:
            x = x.detach()
        low, high = self.threat.bounds
        x_adv = torch.add(x, delta).clamp_(low, high).requires_grad_(True)
        self._x_adv = x_adv  # the pixels: its gradient after backward updates delta
        return self._original_step(
            replace_inputs(batch, self.input_key, self.space.to_inputs(x_adv)),
            batch_idx,
            *args,
            **kwargs,
        )

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.space.resolve(trainer, "train")
        self._checked_inputs = False
        # which zero-grad hooks do something (the replay closure skips dispatching the others)
        callbacks = any(
            adapter.is_overridden("on_before_zero_grad", cb, "Callback") for cb in trainer.callbacks
        )
        module = adapter.is_overridden("on_before_zero_grad", pl_module, "LightningModule")
        self._zero_grad_hooks = (
            callbacks or module,
            adapter.is_overridden("optimizer_zero_grad", pl_module, "LightningModule"),
        )

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._in_step:
            self._step_args = (batch, batch_idx)

    def _replay_closure(self, trainer: Trainer, epoch: int, batch_idx: int, optimizer: Any) -> Any:
        """The closure of the replays before a minibatch's last (see the module docstring), or
        ``None`` where Lightning's own closure must run them (a profiler is on)."""
        step_args = self._step_args
        module = self._module
        if step_args is None or module is None:
            return None
        if adapter.profiler_active(trainer):
            return None
        strategy = trainer.strategy
        before_zero_grad, own_zero_grad = self._zero_grad_hooks

        def replay() -> Tensor | None:
            with torch.enable_grad():
                with adapter.hook_context(module, "training_step"):  # self.log is recorded
                    output = strategy.training_step(*step_args)
                result = adapter.closure_result(trainer, output)
                if result.closure_loss is None and trainer.world_size > 1:
                    raise RuntimeError(
                        "Skipping the `training_step` by returning None in distributed training "
                        "is not supported."
                    )
                # as Lightning's closure: zero_grad even for a skipped step, then backward
                if before_zero_grad:
                    adapter.call_callback_hooks(trainer, "on_before_zero_grad", optimizer)
                    adapter.call_module_hook(trainer, "on_before_zero_grad", optimizer)
                if own_zero_grad:
                    adapter.call_module_hook(
                        trainer, "optimizer_zero_grad", epoch, batch_idx, optimizer
                    )
                else:
                    optimizer.zero_grad()
                if result.closure_loss is not None:
                    strategy.backward(result.closure_loss, optimizer)
                return result.loss

        return replay

    def on_train_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if not self._in_step:
            # Lightning hands a skipped step (training_step returned None) an empty output
            self._update_delta(skipped=not outputs)
        self._x_adv = None
        self._step_args = None

    def on_after_backward(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._in_step:  # one backward per replay, inside the Lightning step
            self._update_delta(skipped=False)

    def _update_delta(self, skipped: bool) -> None:
        """``delta`` takes one step along the input gradient of the replay just run."""
        x_adv, self._x_adv = self._x_adv, None
        if x_adv is None or self._delta is None:
            return
        grad = x_adv.grad
        if grad is None:
            if skipped:
                return  # the step was skipped (training_step returned None)
            raise MisconfigurationException(
                "FreeAdversarialTraining found no gradient on the inputs after the backward "
                "pass: training_step must compute its loss from the batch's inputs "
                f"(at {self.input_key!r}) without detaching them or running under no_grad"
            )
        # Plain tensor arithmetic on tensors that do not require grad (no autograd graph).
        delta = self._delta
        if grad.shape[0] != delta.shape[0]:
            delta = delta[: grad.shape[0]]
        g = grad.detach() if grad.requires_grad else grad  # (a backward with create_graph)
        if g.dtype != delta.dtype:
            g = g.to(delta.dtype)
        moved = torch.add(delta, self.threat.ascent_direction(g), alpha=self.step_size)
        self._into_ball(moved, in_place=True)
        # An example whose input gradient is not finite keeps its perturbation: under float16 (a
        # GradScaler's overflow step, which also skips the optimizer step) or a diverging loss,
        # the gradient says nothing about where the loss rises. One reduction per example finds
        # them: a NaN or an inf anywhere makes the example's sum, times 0, NaN (not 0).
        finite = g.sum(dim=tuple(range(1, g.dim())), keepdim=True).mul_(0).eq(0)
        torch.where(finite, moved, delta, out=delta)

    def _into_ball(self, delta: Tensor, in_place: bool = False) -> Tensor:
        """``delta`` clipped to the cube (linf) or scaled into the ball (l2) of radius eps;
        ``in_place`` overwrites ``delta`` (a tensor that does not require grad)."""
        if self.threat.norm == "linf":
            if in_place:
                return delta.clamp_(-self.eps, self.eps)
            return delta.clamp(-self.eps, self.eps)
        norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
        factor = (self.eps / norms).clamp(max=1.0).view(-1, *([1] * (delta.dim() - 1)))
        return delta.mul_(factor) if in_place else delta * factor

    # -- checkpointing --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"delta": None if self._delta is None else self._delta.detach().cpu().clone()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        delta = state_dict.get("delta")
        # into this callback's ball: the training inputs x + delta are only clipped to the box
        self._delta = None if delta is None else self._into_ball(delta.float())


__all__ = ["FreeAdversarialTraining", "ReplayLoader"]
