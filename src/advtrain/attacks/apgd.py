"""Auto-PGD (APGD): PGD with momentum and a step size that adapts itself, and its targeted form.

References:
    Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
    parameter-free attacks", ICML 2020 (APGD, Algorithm 1; the DLR loss; APGD-T). Defaults:
    100 iterations, step size 2·eps at the start, checkpoints ``p_0 = 0, p_1 = 0.22,
    p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``, ``rho = 0.75``, momentum ``alpha = 0.75``;
    APGD-T runs the targeted DLR loss against the 9 most likely other classes.
    Croce & Hein, "Mind the Box: l1-APGD for Sparse Adversarial Attacks on Image Classifiers",
    ICML 2021 (l1-APGD: sparse steepest-ascent step with adaptive sparsity, exact projection onto
    the L1 ball ∩ box, checkpoints every 4% of the iterations, step size eps; AutoAttack's L1
    version runs 30%/30%/40% of the iterations at 3·eps, 2·eps and eps).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advtrain.attacks.base import Attack
from advtrain.attacks.malt import malt_targets
from advtrain.attacks.objectives import get_objective, targeted_dlr
from advtrain.attacks.precision import loss_scaled_logits
from advtrain.modes import BNMode
from advtrain.threat import ThreatModel
from advtrain.validation import check_positive_int

#: How APGD-T chooses its target classes (see the class docstring).
TARGET_RANKINGS = ("logits", "malt")

#: Per-example loss to maximise, called as ``loss(logits, y, target)`` (``target`` may be None).
_Loss = Callable[[Tensor, Tensor, "Tensor | None"], Tensor]


def checkpoints(steps: int) -> list[int]:
    """APGD's checkpoint iterations ``w_j = ceil(p_j · steps)`` (Croce & Hein 2020, Sec. 3.2).

    ``p_0 = 0``, ``p_1 = 0.22`` and ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``; the
    fractions are computed exactly in hundredths, so ``steps=100`` gives
    ``[22, 41, 57, 70, 80, 87, 93, 99]``. Checkpoints repeat (for tiny ``steps``) are merged.
    """
    marks: list[int] = []
    prev, cur = 0, 22  # hundredths
    while cur <= 100:
        w = -(-cur * steps // 100)  # ceil without float rounding
        if w >= 1 and (not marks or w > marks[-1]):
            marks.append(w)
        prev, cur = cur, cur + max(cur - prev - 3, 6)
    return marks


def _view(v: Tensor, like: Tensor) -> Tensor:
    return v.view(-1, *([1] * (like.dim() - 1)))


def _rows(mask: Tensor) -> Tensor:
    """The selection :func:`_copy_rows_` takes for a per-example boolean ``mask``.

    On the CPU the indices of the selected rows (late in a run few examples change, and finding
    them costs no device sync); on accelerators the mask itself, for a branch-free
    ``torch.where`` that avoids a host sync per iteration. One selection serves several copies.
    """
    return mask.nonzero().squeeze(1) if mask.device.type == "cpu" else mask


def _copy_rows_(dst: Tensor, rows: Tensor, src: Tensor) -> Tensor:
    """``dst[rows] = src[rows]`` in place, for ``rows`` from :func:`_rows`."""
    if rows.dtype != torch.bool:
        if rows.numel():
            dst.index_copy_(0, rows, src.index_select(0, rows))
        return dst
    return torch.where(_view(rows, dst), src, dst, out=dst)


class APGD(Attack):
    """Auto-PGD (Croce & Hein, ICML 2020): APGD-CE, APGD-DLR and the targeted APGD-T.

    Gradient ascent with momentum ``alpha = 0.75`` whose step size starts at ``2·eps`` and is
    halved, per example, at the checkpoints ``w_j`` when (1) fewer than ``rho`` of the steps since
    the last checkpoint increased the loss, or (2) the step size was not reduced at the last
    checkpoint and the best loss has not improved since; on a reduction the iterate restarts from
    the best point found. Each example keeps its worst case: a misclassified point as soon as one
    is found (the one of highest loss among them), otherwise the point of highest loss.

    ``norm="l1"`` runs l1-APGD (Croce & Hein, ICML 2021): sparse steps along the largest gradient
    coordinates with the sparsity adapted to the best perturbation's, the exact projection onto
    the L1 ball ∩ box, step size ``eps`` shrunk by 1.5 (never below ``eps/10``) at checkpoints
    every 4% of the iterations, no momentum (as in the authors' code).

    Targeted (APGD-T, ``targeted=True``): for each of the ``n_target_classes`` classes with the
    largest clean logits other than the label, a run maximises the targeted DLR loss towards that
    class; runs after the first (and restarts) only attack the examples still classified
    correctly. Success is misclassification, as in the paper.

    Examples the model already misclassifies are returned unchanged (they are adversarial at no
    cost), and restarts run only on the examples no earlier run fooled. The loss is computed in
    float32, so the attack runs under ``torch.autocast`` (bf16/fp16 forward passes).

    Args:
        eps: Radius of the ball, in input units.
        norm: ``"linf"``, ``"l2"`` or ``"l1"``.
        steps: Iterations per run (paper: 100).
        restarts: Runs from independent random starts (per target class when targeted).
        loss: ``"ce"`` (cross-entropy, default untargeted), ``"dlr"`` (difference of logits
            ratio; the default and the paper's choice when targeted) or ``"cw"`` (margin).
            Targeted ``"ce"`` minimises the cross-entropy to the target; targeted ``"cw"``
            maximises ``z_t - z_y``.
        targeted: Run APGD-T instead of the untargeted attack.
        n_target_classes: Target classes of APGD-T (paper: 9); must be below the number of
            classes.
        target_ranking: How APGD-T picks its target classes: ``"logits"`` (the largest clean
            logits, as in the paper) or ``"malt"`` (the nearest linearised decision boundary,
            Melamed et al. 2024; :mod:`advtrain.attacks.malt`), which finds the same adversarial
            examples with fewer targets.
        rho: Fraction of loss-increasing steps below which the step size is halved (0.75).
        momentum: Weight of the new step in the momentum update, the paper's ``alpha`` (0.75).
        large_eps: L1 only: run 30%/30%/40% of the iterations at ``3·eps``, ``2·eps``, ``eps``,
            each stage starting from the previous one's best point (AutoAttack's L1 setting).
        bounds: ``(low, high)`` of valid inputs.
        seed: Seed of the random starts.
        bn_mode: BatchNorm behaviour during the attack (default ``"eval"``).
    """

    supported_norms = ("linf", "l2", "l1")

    def __init__(
        self,
        eps: float = 8 / 255,
        norm: str = "linf",
        steps: int = 100,
        restarts: int = 1,
        loss: str | None = None,
        targeted: bool = False,
        n_target_classes: int = 9,
        rho: float = 0.75,
        momentum: float = 0.75,
        large_eps: bool = False,
        bounds: Sequence[float] = (0.0, 1.0),
        seed: int | None = None,
        bn_mode: BNMode = "eval",
        target_ranking: str = "logits",
    ) -> None:
        super().__init__(eps=eps, norm=norm, bounds=bounds, seed=seed, bn_mode=bn_mode)
        if target_ranking not in TARGET_RANKINGS:
            raise ValueError(
                f"target_ranking must be one of {list(TARGET_RANKINGS)}, got {target_ranking!r}"
            )
        self.target_ranking = target_ranking
        self.steps = check_positive_int(steps, "steps")
        self.restarts = check_positive_int(restarts, "restarts")
        self.targeted = bool(targeted)
        if loss is None:
            loss = "dlr" if self.targeted else "ce"
        get_objective(loss)  # validates the name
        self.loss = loss.lower()
        self.n_target_classes = check_positive_int(n_target_classes, "n_target_classes")
        rho = float(rho)
        if not 0.0 < rho <= 1.0:
            raise ValueError(f"rho must be in (0, 1], got {rho}; the paper uses 0.75")
        self.rho = rho
        momentum = float(momentum)
        if not 0.0 < momentum <= 1.0:
            raise ValueError(
                f"momentum must be in (0, 1] (1 disables momentum), got {momentum}; "
                "the paper uses 0.75"
            )
        self.momentum = momentum
        if large_eps and self.norm != "l1":
            raise ValueError("large_eps is an l1-APGD schedule; use it with norm='l1' only")
        self.large_eps = bool(large_eps)

    @property
    def name(self) -> str:  # type: ignore[override]
        """Report name: ``apgd-ce``, ``apgd-dlr``, ``apgd-t`` (targeted DLR), ``apgd-t-ce``."""
        if self.targeted:
            return "apgd-t" if self.loss == "dlr" else f"apgd-t-{self.loss}"
        return f"apgd-{self.loss}"

    def extra_repr(self) -> str:
        parts = f"steps={self.steps}, restarts={self.restarts}, loss={self.loss!r}"
        if self.targeted:
            parts += f", targeted=True, n_target_classes={self.n_target_classes}"
            if self.target_ranking != "logits":
                parts += f", target_ranking={self.target_ranking!r}"
        if self.large_eps:
            parts += ", large_eps=True"
        return parts

    # -- loss -----------------------------------------------------------------------------------
    def _loss_fn(self) -> _Loss:
        if not self.targeted:
            objective = get_objective(self.loss)
            return lambda logits, y, target: objective(logits, y)
        if self.loss == "dlr":
            return lambda logits, y, target: targeted_dlr(logits, y, target)
        if self.loss == "ce":
            return lambda logits, y, target: (
                -F.cross_entropy(logits.float(), target, reduction="none")
            )
        # targeted margin: z_t - z_y
        return lambda logits, y, target: (
            logits.float().gather(1, target.unsqueeze(1)).squeeze(1)
            - logits.float().gather(1, y.unsqueeze(1)).squeeze(1)
        )

    # -- one run --------------------------------------------------------------------------------
    def _random_start(self, x: Tensor, threat: ThreatModel, key: tuple[int, ...]) -> Tensor:
        """The reference start: a random point on the Linf/L2 sphere, or projected noise (L1)."""
        draws = self.draws(x.device)
        low, high = threat.bounds
        if threat.norm == "linf":
            t = draws.rand(x.shape, x.dtype, key) * 2 - 1
            scale = t.flatten(1).abs().amax(1)
        else:
            t = draws.randn(x.shape, x.dtype, key)
            if threat.norm == "l1":
                return threat.project(x + t, x)
            scale = t.flatten(1).norm(p=2, dim=1)
        delta = t * _view(threat.eps / (scale + 1e-12), t)
        return (x + delta).clamp(low, high)

    def _run(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        target: Tensor | None,
        loss_fn: _Loss,
        eps: float,
        steps: int,
        x_init: Tensor | None,
        key: tuple[int, ...] = (),
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """One APGD run from ``x_init`` (or a random start).

        Returns:
            ``(x_out, fooled, loss_out, x_best, loss_best)``: the per-example result (a
            misclassified point if one was found, else the highest-loss point), whether it is
            misclassified, its loss, and the highest-loss point with its loss.
        """
        # Longer than 80 lines on purpose: Algorithm 1 of Croce & Hein (2020) as one loop whose
        # dozen per-example state tensors (step sizes, momentum, best points, checkpoint counters)
        # live in local variables and closures; split into functions they would be passed around
        # on every iteration of the attack's hottest path (BENCHMARKS.md, "Attacks").
        threat = ThreatModel(norm=self.norm, eps=eps, bounds=self.bounds)
        l1 = threat.norm == "l1"
        linf = threat.norm == "linf"
        x_adv = self._random_start(x, threat, key) if x_init is None else threat.project(x_init, x)
        if linf:
            lo, hi = threat.linf_limits(x)

        ones: Tensor | None = None  # d(sum of the losses)/d(loss), made on the first pass
        per_example = self.bn_mode == "eval"  # examples independent: one loss scale each

        def forward(x_in: Tensor, need_grad: bool) -> tuple[Tensor, Tensor, Tensor | None]:
            nonlocal ones
            if not need_grad:
                with torch.no_grad():
                    logits = model(x_in)
                    return loss_fn(logits, y, target), logits.argmax(1) != y, None
            x_in.requires_grad_(True)
            logits, unscale = loss_scaled_logits(model(x_in), per_example=per_example)
            loss = loss_fn(logits, y, target)
            if ones is None:
                ones = torch.ones_like(loss)
            (g,) = torch.autograd.grad(loss, x_in, grad_outputs=ones)
            g = unscale(g)
            x_in.requires_grad_(False)
            return loss.detach(), logits.argmax(1) != y, g

        loss, fooled_now, grad = forward(x_adv, need_grad=steps > 0)
        # Own buffers, updated in place below. ``x_out`` and ``loss_out`` follow the examples
        # misclassified so far (the highest-loss misclassified point); the others' output is
        # their highest-loss point, ``x_best``, filled in at the end.
        x_best, loss_best = x_adv.clone(), loss
        grad_best = None if grad is None else grad.clone()
        x_out, fooled = x_adv.clone(), fooled_now
        loss_out = torch.where(fooled, loss, float("-inf"))

        n = x.shape[0]
        n_fts = x[0].numel()
        if l1:
            base_step = 1.0 * eps
            step = torch.full((n,), base_step, device=x.device, dtype=x.dtype)
            marks = set(range(max(int(0.04 * steps), 1), steps + 1, max(int(0.04 * steps), 1)))
            if x_init is None:
                topk = torch.full((n,), 0.2, device=x.device, dtype=x.dtype)
                sp_old = torch.full((n,), float(n_fts), device=x.device, dtype=x.dtype)
            else:
                sp_old = (x_adv - x).flatten(1).ne(0).sum(1).to(x.dtype)
                topk = sp_old / n_fts / 1.5
        else:
            step = torch.full((n,), 2.0 * eps, device=x.device, dtype=x.dtype)
            marks_list = checkpoints(steps)
            marks = set(marks_list)
            # Steps between consecutive checkpoints (the first window starts at iteration 0).
            window = dict(zip(marks_list, np.diff([0, *marks_list]).tolist(), strict=True))
            increases = torch.zeros(n, device=x.device, dtype=torch.int32)
            reduced_last = torch.ones(n, device=x.device, dtype=torch.bool)
            loss_best_last = loss_best
            prev_loss = loss
        x_prev = x_adv
        s = _view(step, x)  # the step size per example, shaped for broadcasting

        for i in range(steps):
            assert grad is not None
            with torch.no_grad():
                if l1:
                    flat = grad.flatten(1).abs()
                    kth = ((1.0 - topk) * n_fts).clamp(0, n_fts - 1).long()
                    thresh = flat.sort(dim=1).values.gather(1, kth.unsqueeze(1))
                    sparse = torch.where(flat >= thresh, grad.flatten(1).sign(), 0.0)
                    sparse = sparse / (sparse.abs().sum(1, keepdim=True) + 1e-10)
                    x_new = threat.project(x_adv + s * sparse.view_as(x), x)
                else:
                    # x_new = P(x + a (z - x) + (1 - a)(x - x_prev))
                    #       = P(a z + 2 (1 - a) x - (1 - a) x_prev), computed in place
                    # (``grad`` is this pass's own tensor; ``grad_best`` holds copies).
                    a = self.momentum if i > 0 else 1.0
                    if linf:
                        z = grad.sign_().mul_(s).add_(x_adv).clamp_(lo, hi)
                    else:
                        g_norm = grad.flatten(1).norm(p=2, dim=1) + 1e-12
                        z = threat.project(x_adv + grad * _view(step / g_norm, grad), x)
                    if a != 1.0:
                        z = z.mul_(a).add_(x_adv, alpha=2 * (1 - a)).sub_(x_prev, alpha=1 - a)
                    x_new = z.clamp_(lo, hi) if linf else threat.project(z, x)
                x_prev, x_adv = x_adv, x_new

            last = i == steps - 1
            loss, fooled_now, grad = forward(x_adv, need_grad=not last)

            with torch.no_grad():
                # Output: a misclassified point as soon as one is found (``loss_out`` is -inf
                # until then), the one of highest loss among them.
                take = fooled_now & (loss > loss_out)
                _copy_rows_(x_out, _rows(take), x_adv)
                loss_out = torch.where(take, loss, loss_out)
                fooled = fooled | fooled_now
                # Highest-loss point (the restart point).
                better = loss > loss_best
                better_rows = _rows(better)
                _copy_rows_(x_best, better_rows, x_adv)
                loss_best = torch.where(better, loss, loss_best)
                if last:
                    break
                # Every example is misclassified: nothing left to gain (checked at checkpoints
                # only, to keep host syncs out of the inner loop).
                if i + 1 in marks and bool(fooled.all()):
                    break
                assert grad is not None and grad_best is not None
                _copy_rows_(grad_best, better_rows, grad)

                if l1:
                    if i + 1 in marks:
                        sp_cur = (x_best - x).flatten(1).ne(0).sum(1).to(x.dtype)
                        sparser = sp_cur / sp_old.clamp_min(1) < 0.95
                        topk = sp_cur / n_fts / 1.5
                        step = torch.where(sparser, base_step, step / 1.5)
                        step = step.clamp(base_step / 10, base_step)
                        s = _view(step, x)
                        sp_old = sp_cur
                        x_adv = torch.where(_view(sparser, x), x_best, x_adv)
                        grad = torch.where(_view(sparser, x), grad_best, grad)
                    continue

                increases += loss > prev_loss
                prev_loss = loss
                if i + 1 in marks:
                    cond1 = increases < self.rho * window[i + 1]
                    cond2 = ~reduced_last & (loss_best_last >= loss_best)
                    reduce = cond1 | cond2
                    step = torch.where(reduce, step / 2, step)
                    s = _view(step, x)
                    x_adv = torch.where(_view(reduce, x), x_best, x_adv)
                    grad = torch.where(_view(reduce, x), grad_best, grad)
                    prev_loss = torch.where(reduce, loss_best, loss)
                    reduced_last = reduce
                    loss_best_last = loss_best
                    increases.zero_()

        # Examples never misclassified: their highest-loss point.
        unfooled = ~fooled
        _copy_rows_(x_out, _rows(unfooled), x_best)
        loss_out = torch.where(unfooled, loss_best, loss_out)
        return x_out, fooled, loss_out, x_best, loss_best

    def _single(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        target: Tensor | None,
        loss_fn: _Loss,
        key: tuple[int, ...] = (),
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One run, or the L1 large-eps schedule; returns ``(x_out, fooled, loss_out)``.

        ``key`` names the run (target, restart) for per-example draws.
        """
        if not self.large_eps:
            x_out, fooled, loss_out, _, _ = self._run(
                model, x, y, target, loss_fn, self.eps, self.steps, None, key
            )
            return x_out, fooled, loss_out
        first = math.ceil(0.3 * self.steps)
        stages = [(3.0 * self.eps, first), (2.0 * self.eps, first)]
        stages.append((self.eps, self.steps - 2 * first))
        if stages[-1][1] < 1:  # too few iterations for a schedule
            stages = [(self.eps, self.steps)]
        big = ThreatModel(norm="l1", eps=stages[0][0], bounds=self.bounds)
        x_init = big.project(x + self.draws(x.device).randn(x.shape, x.dtype, (*key, 9)), x)
        for eps, it in stages[:-1]:
            _, _, _, x_init, _ = self._run(model, x, y, target, loss_fn, eps, it, x_init)
        eps, it = stages[-1]
        x_out, fooled, loss_out, _, _ = self._run(model, x, y, target, loss_fn, eps, it, x_init)
        return x_out, fooled, loss_out

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        with torch.no_grad():
            logits = model(x)
        self.check_logits(logits, y)
        num_classes = logits.shape[1]
        if self.loss == "dlr" and num_classes < (4 if self.targeted else 3):
            raise ValueError(
                f"the {'targeted ' if self.targeted else ''}DLR loss needs at least "
                f"{4 if self.targeted else 3} classes, the model has {num_classes}; use loss='ce'"
            )
        targets: Tensor | None = None
        n_runs = 1
        if self.targeted:
            if self.n_target_classes >= num_classes:
                raise ValueError(
                    f"n_target_classes must be below the number of classes ({num_classes}), "
                    f"got {self.n_target_classes}; use at most {num_classes - 1}"
                )
            if self.target_ranking == "malt":
                targets = malt_targets(model, x, y, self.n_target_classes, self.norm)
            else:
                others = logits.detach().float().scatter(1, y.unsqueeze(1), float("-inf"))
                targets = others.topk(self.n_target_classes, dim=1).indices
            n_runs = self.n_target_classes

        loss_fn = self._loss_fn()
        x_adv = x.clone()
        fooled = logits.argmax(1) != y
        best_loss = torch.full((x.shape[0],), float("-inf"), device=x.device)
        for run in range(n_runs):
            for restart in range(self.restarts):
                todo = (~fooled).nonzero().squeeze(1)
                if todo.numel() == 0:
                    return x_adv
                x_r, y_r = x[todo], y[todo]
                t_r = None if targets is None else targets[todo, run]
                with self.narrow(todo):
                    cand, cand_fooled, cand_loss = self._single(
                        model, x_r, y_r, t_r, loss_fn, (run, restart)
                    )
                # Unfooled examples keep their highest-loss point (losses of different targets
                # are compared as they are); a fooled one wins.
                take = cand_fooled | (cand_loss > best_loss[todo])
                idx = todo[take]
                x_adv[idx] = cand[take]
                best_loss[idx] = cand_loss[take]
                fooled[idx] = cand_fooled[take]
        return x_adv


__all__ = ["APGD", "TARGET_RANKINGS", "checkpoints"]
