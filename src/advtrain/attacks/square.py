"""Square Attack: a score-based black-box attack by random search over square-shaped updates.

References:
    Andriushchenko, Croce, Flammarion & Hein, "Square Attack: a query-efficient black-box
    adversarial attack via random search", ECCV 2020. Linf: vertical-stripe initialisation, each
    step sets a random square window of every channel to ``±eps``; L2: a grid of "centred
    difference" bumps as initialisation, each step moves mass between two random windows. The
    window side ``s = round(sqrt(p · h · w))`` follows the piecewise-constant schedule that halves
    ``p`` at iterations {10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000} of a 10,000-query
    budget (rescaled to ``n_queries``). Margin loss; a candidate is kept only if it lowers the loss
    (or misclassifies).
    Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
    parameter-free attacks", ICML 2020 (AutoAttack "standard": 5000 queries, ``p_init=0.8``,
    one restart, margin loss, for both Linf and L2).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advtrain.attacks.base import Attack, BNMode, check_positive_int
from advtrain.attacks.objectives import cw_margin

#: Iterations (out of 10,000) after which the fraction ``p`` of pixels changed per step halves.
P_SCHEDULE_CHECKPOINTS: tuple[int, ...] = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)

#: Linf only: how often a sign draw that would leave the image unchanged is redrawn (no queries).
_MAX_RESAMPLES = 10


def p_schedule(p_init: float, iteration: int, n_queries: int) -> float:
    """Fraction of pixels a Square Attack step changes at ``iteration`` (0-based).

    The paper's schedule for 10,000 queries halves ``p`` after each of
    :data:`P_SCHEDULE_CHECKPOINTS`; for another budget the iteration is rescaled to
    ``iteration / n_queries · 10,000`` first (as in AutoAttack).
    """
    it = int(iteration / n_queries * 10_000)
    halvings = sum(1 for c in P_SCHEDULE_CHECKPOINTS if it > c)
    return p_init / 2**halvings


def _centred_bump(rows: int, cols: int) -> Tensor:
    """A ``rows × cols`` pyramid of nested rectangles, unit L2 norm (the paper's ``η`` block).

    The value at a pixel is ``Σ_{k=d}^{K-1} 1/(k+1)²`` with ``d`` its Chebyshev distance to the
    centre ``(rows // 2, cols // 2)`` and ``K = max(rows, cols) // 2 + 1``: each ring of rectangles
    around the centre adds ``1/(k+1)²``, so the block peaks at the centre and decays outwards.
    """
    if rows == 0 or cols == 0:
        return torch.zeros(rows, cols)
    n_rings = max(rows // 2 + 1, cols // 2 + 1)
    weights = 1.0 / torch.arange(1, n_rings + 1, dtype=torch.float64) ** 2
    tail = weights.flip(0).cumsum(0).flip(0)  # tail[d] = Σ_{k >= d} w_k
    ri = (torch.arange(rows) - rows // 2).abs()
    ci = (torch.arange(cols) - cols // 2).abs()
    dist = torch.maximum(ri[:, None], ci[None, :]).clamp(max=n_rings - 1)
    block = tail[dist]
    return (block / block.norm()).float()


def centred_difference_block(s: int) -> Tensor:
    """The L2 update block of side ``s``: a positive bump above a negative one, unit L2 norm.

    Rows ``[0, s // 2)`` hold a bump and rows ``[s // 2, s)`` the negated bump, so the block moves
    mass within the window while keeping its sum near zero (Andriushchenko et al. 2020, Sec. 3.2).
    """
    block = torch.zeros(s, s)
    block[: s // 2] = _centred_bump(s // 2, s)
    block[s // 2 :] = -_centred_bump(s - s // 2, s)
    return block / block.norm()


def _window_mask(top: Tensor, left: Tensor, s: int, h: int, w: int) -> Tensor:
    """Boolean masks ``(m, 1, h, w)`` of the ``s × s`` windows at ``(top, left)`` per example."""
    rows = torch.arange(h, device=top.device)
    cols = torch.arange(w, device=top.device)
    in_rows = (rows[None, :] >= top[:, None]) & (rows[None, :] < top[:, None] + s)
    in_cols = (cols[None, :] >= left[:, None]) & (cols[None, :] < left[:, None] + s)
    return (in_rows[:, :, None] & in_cols[:, None, :]).unsqueeze(1)


def _window_index(top: Tensor, left: Tensor, s: int) -> tuple[Tensor, Tensor, Tensor]:
    """Advanced-indexing tensors selecting each example's ``s × s`` window of a ``(m, c, h, w)``
    tensor as ``t[b, :, r, c]`` -> shape ``(m, s, s, c)``."""
    offs = torch.arange(s, device=top.device)
    b = torch.arange(top.shape[0], device=top.device)[:, None, None]
    r = (top[:, None] + offs[None, :])[:, :, None]
    c = (left[:, None] + offs[None, :])[:, None, :]
    return b, r, c


class Square(Attack):
    """Square Attack (Andriushchenko et al., ECCV 2020), score-based and gradient-free.

    Only forward passes under ``torch.no_grad`` are used, so the attack is immune to gradient
    masking (non-differentiable layers, shattered or vanishing gradients): a model that looks
    robust to PGD/APGD but not to Square is masking gradients. The search is vectorised over the
    batch, each example with its own random windows, and stops per example as soon as it is
    misclassified: an example already misclassified costs one query (the clean forward pass), and
    only the still-robust examples are queried afterwards.

    Per restart an example costs at most ``n_queries`` forward passes (the initialisation plus
    ``n_queries - 1`` random-search steps); restarts after the first run only on the examples
    still classified correctly. The result is, per example, a misclassified point if one was found,
    else the point of lowest loss.

    Args:
        eps: Radius of the ball, in input units.
        norm: ``"linf"`` or ``"l2"``.
        n_queries: Query budget per example and restart (paper and AutoAttack: 5000).
        p_init: Initial fraction of pixels changed per step (AutoAttack: 0.8 for both norms).
        restarts: Independent runs on the still-robust examples.
        loss: ``"margin"`` (``z_y - max_{j≠y} z_j``, the paper's default) or ``"ce"``.
        bounds: ``(low, high)`` of valid inputs.
        seed: Seed of the attack's generator (windows and signs); fixed seed → identical result.
        bn_mode: BatchNorm behaviour during the attack (default ``"eval"``).

    Inputs must be images ``(batch, channels, height, width)``; L2 needs height and width >= 3.
    """

    supported_norms = ("linf", "l2")
    name = "square"

    def __init__(
        self,
        eps: float = 8 / 255,
        norm: str = "linf",
        n_queries: int = 5000,
        p_init: float = 0.8,
        restarts: int = 1,
        loss: str = "margin",
        bounds: Sequence[float] = (0.0, 1.0),
        seed: int | None = None,
        bn_mode: BNMode = "eval",
    ) -> None:
        super().__init__(eps=eps, norm=norm, bounds=bounds, seed=seed, bn_mode=bn_mode)
        self.n_queries = check_positive_int(n_queries, "n_queries")
        self.restarts = check_positive_int(restarts, "restarts")
        if isinstance(p_init, bool) or not isinstance(p_init, (int, float)):
            raise TypeError(f"p_init must be a number in (0, 1], got {p_init!r}")
        if not 0.0 < float(p_init) <= 1.0:
            raise ValueError(
                f"p_init (initial fraction of pixels changed per step) must be in (0, 1], "
                f"got {p_init}; the paper uses 0.05-0.8, AutoAttack 0.8"
            )
        self.p_init = float(p_init)
        if not isinstance(loss, str) or loss.lower() not in ("margin", "ce"):
            raise ValueError(f"loss must be 'margin' or 'ce' for Square, got {loss!r}")
        self.loss = loss.lower()

    def extra_repr(self) -> str:
        return (
            f"n_queries={self.n_queries}, p_init={self.p_init:g}, restarts={self.restarts}, "
            f"loss={self.loss!r}"
        )

    # -- helpers --------------------------------------------------------------------------------
    def _score(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """One query: ``(loss to minimise, fooled)`` per example."""
        logits = model(x)
        if self.loss == "margin":
            loss = -cw_margin(logits, y)  # z_y - max_{j≠y} z_j
        else:
            loss = -F.cross_entropy(logits.float(), y, reduction="none")
        return loss, logits.argmax(dim=1) != y

    def _signs(self, shape: Sequence[int], like: Tensor) -> Tensor:
        gen = self.generator(like.device)
        bits = torch.randint(0, 2, tuple(shape), generator=gen, device=like.device)
        return (2 * bits - 1).to(like.dtype)

    def _positions(self, m: int, span: int, device: torch.device) -> Tensor:
        """``m`` random window offsets in ``[0, span]``."""
        gen = self.generator(device)
        return torch.randint(0, span + 1, (m,), generator=gen, device=device)

    def _init_linf(self, x: Tensor) -> Tensor:
        n, c, _, w = x.shape
        low, high = self.bounds
        return (x + self.eps * self._signs((n, c, 1, w), x)).clamp(low, high)

    def _init_l2(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        low, high = self.bounds
        s = max(min(h, w) // 5, 1)
        top0, left0 = max((h - 5 * s) // 2, 0), max((w - 5 * s) // 2, 0)
        block = centred_difference_block(s).to(device=x.device, dtype=x.dtype)
        delta = torch.zeros_like(x)
        for top in range(top0, h - s + 1, s):
            for left in range(left0, w - s + 1, s):
                delta[:, :, top : top + s, left : left + s] += block * self._signs((n, c, 1, 1), x)
        norm = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        return (x + delta / norm * self.eps).clamp(low, high)

    def _step_linf(self, x: Tensor, x_best: Tensor, p: float) -> Tensor:
        """Candidate: one random window per example set to ``±eps`` per channel."""
        m, c, h, w = x.shape
        low, high = self.bounds
        s = min(max(round(math.sqrt(p * h * w)), 1), min(h, w))
        top, left = self._positions(m, h - s, x.device), self._positions(m, w - s, x.device)
        mask = _window_mask(top, left, s, h, w)
        delta = x_best - x
        signs = self._signs((m, c, 1, 1), x)
        cand = (x + torch.where(mask, self.eps * signs, delta)).clamp(low, high)
        # Redraw the signs where the window would not change (free: no query is spent).
        for _ in range(_MAX_RESAMPLES):
            same = (cand - x_best).flatten(1).abs().amax(dim=1) < 1e-7
            if not bool(same.any()):
                break
            signs = torch.where(same.view(-1, 1, 1, 1), self._signs((m, c, 1, 1), x), signs)
            redrawn = (x + torch.where(mask, self.eps * signs, delta)).clamp(low, high)
            cand = torch.where(same.view(-1, 1, 1, 1), redrawn, cand)
        return cand

    def _step_l2(self, x: Tensor, x_best: Tensor, p: float) -> Tensor:
        """Candidate: a new centred-difference block in window 1, mass taken from window 2."""
        m, c, h, w = x.shape
        low, high = self.bounds
        eps = self.eps
        s = max(round(math.sqrt(p * h * w)), 3)
        s += 1 - s % 2  # odd side
        s = min(s, min(h, w))
        top1, left1 = self._positions(m, h - s, x.device), self._positions(m, w - s, x.device)
        top2, left2 = self._positions(m, h - s, x.device), self._positions(m, w - s, x.device)
        mask1 = _window_mask(top1, left1, s, h, w)
        mask2 = _window_mask(top2, left2, s, h, w)
        delta = x_best - x
        norm_img = delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        norm_win1 = (delta * mask1).pow(2).sum(dim=(2, 3), keepdim=True).sqrt()
        norm_union = (delta * (mask1 | mask2)).pow(2).sum(dim=(2, 3), keepdim=True).sqrt()
        block = centred_difference_block(s).to(device=x.device, dtype=x.dtype)
        flip = self._positions(m, 1, x.device).bool().view(-1, 1, 1, 1)
        blocks = torch.where(flip, block.t(), block).expand(m, c, s, s)
        idx1 = _window_index(top1, left1, s)
        old = delta[idx1[0], :, idx1[1], idx1[2]].permute(0, 3, 1, 2)  # (m, c, s, s)
        new = blocks * self._signs((m, c, 1, 1), x) + old / (norm_win1 + 1e-10)
        new_norm = new.pow(2).sum(dim=(2, 3), keepdim=True).sqrt().clamp_min(1e-12)
        budget = ((eps**2 - norm_img**2).clamp_min(0) / c + norm_union**2).sqrt()
        new = new / new_norm * budget
        delta = delta.masked_fill(mask2, 0.0)
        delta[idx1[0], :, idx1[1], idx1[2]] = new.permute(0, 2, 3, 1)
        norm = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        return (x + delta / norm * eps).clamp(low, high)

    # -- the search -----------------------------------------------------------------------------
    def _run(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One restart on ``(x, y)``; returns ``(x_best, loss_best, fooled)``."""
        init = self._init_linf if self.norm == "linf" else self._init_l2
        step = self._step_linf if self.norm == "linf" else self._step_l2
        x_best = init(x)
        loss_best, fooled = self._score(model, x_best, y)
        for i in range(self.n_queries - 1):
            active = (~fooled).nonzero().squeeze(1)
            if active.numel() == 0:
                break
            xa, ya = x[active], y[active]
            cand = step(xa, x_best[active], p_schedule(self.p_init, i, self.n_queries))
            loss, cand_fooled = self._score(model, cand, ya)
            accept = (loss < loss_best[active]) | cand_fooled
            idx = active[accept]
            x_best[idx] = cand[accept]
            loss_best[idx] = loss[accept]
            fooled[idx] = cand_fooled[accept]
        return x_best, loss_best, fooled

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        if x.dim() != 4:
            raise ValueError(
                f"Square needs image batches (batch, channels, height, width), got shape "
                f"{tuple(x.shape)}; reshape flat inputs to (batch, 1, 1, features) or use PGD/APGD"
            )
        h, w = x.shape[2], x.shape[3]
        if self.norm == "l2" and min(h, w) < 3:
            raise ValueError(
                f"L2 Square needs images of at least 3x3 pixels, got {h}x{w}; use norm='linf'"
            )
        with torch.no_grad():
            logits = model(x)
            self.check_logits(logits, y)
            fooled = logits.argmax(dim=1) != y
            x_adv = x.clone()
            best_loss = torch.full((x.shape[0],), float("inf"), device=x.device)
            for _ in range(self.restarts):
                todo = (~fooled).nonzero().squeeze(1)
                if todo.numel() == 0:
                    break
                cand, loss, cand_fooled = self._run(model, x[todo], y[todo])
                better = cand_fooled | (loss < best_loss[todo])
                idx = todo[better]
                x_adv[idx] = cand[better]
                best_loss[idx] = loss[better]
                fooled[idx] = cand_fooled[better]
            # Float safety: the search stays in the ball and box by construction.
            return self.threat.project(x_adv, x)
