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

from advtrain.attacks.base import Attack
from advtrain.attacks.objectives import cw_margin
from advtrain.modes import BNMode
from advtrain.validation import check_positive_int

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


class _Tables:
    """Per-active-set constants of a Square search: window rows/columns and the Linf corners.

    ``window_mask(s, top, left)`` is the boolean ``(m, 1, h, w)`` mask of each example's
    ``s × s`` window, built from two small lookup tables (cached per side ``s``). For Linf,
    ``low``/``high`` are ``x ∓ eps`` clipped to the box: the two values a window pixel can take.
    """

    def __init__(self, x: Tensor, eps: float, low: float, high: float, linf: bool) -> None:
        self.h, self.w = x.shape[2], x.shape[3]
        self.device = x.device
        self._lines: dict[int, tuple[Tensor, Tensor]] = {}
        if linf:
            self.low = (x - eps).clamp_(low, high)
            self.high = (x + eps).clamp_(low, high)

    def _line_tables(self, s: int) -> tuple[Tensor, Tensor]:
        if s not in self._lines:

            def lines(n: int) -> Tensor:
                start = torch.arange(n - s + 1, device=self.device)[:, None]
                pos = torch.arange(n, device=self.device)[None, :]
                return (pos >= start) & (pos < start + s)

            self._lines[s] = (lines(self.h), lines(self.w))
        return self._lines[s]

    def window_mask(self, s: int, top: Tensor, left: Tensor) -> Tensor:
        rows, cols = self._line_tables(s)
        return (rows[top][:, :, None] & cols[left][:, None, :]).unsqueeze(1)


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
            return loss, loss < 0  # some other logit is strictly larger
        loss = -F.cross_entropy(logits.float(), y, reduction="none")
        return loss, logits.argmax(dim=1) != y

    def _signs(self, shape: Sequence[int], like: Tensor, key: Sequence[int] = ()) -> Tensor:
        bits = self.draws(like.device).randint(0, 2, shape, key)
        return (2 * bits - 1).to(like.dtype)

    def _positions(
        self, m: int, span: int, device: torch.device, key: Sequence[int] = ()
    ) -> Tensor:
        """``m`` random window offsets in ``[0, span]``."""
        return self.draws(device).randint(0, span + 1, (m,), key)

    def _nonzero_pattern(
        self, m: int, c: int, device: torch.device, key: Sequence[int] = ()
    ) -> Tensor:
        """``(m, c, 1, 1)`` boolean patterns, uniform over the non-zero ones (``c <= 20``).

        XOR-ing a sign vector with such a pattern gives a uniform draw among the other sign
        vectors, and a window that was unchanged under the old signs changes under the new ones
        (each channel's window held the old value everywhere). Above 20 channels a plain uniform
        pattern is drawn (all-zero with probability below 1e-6; the caller redraws).
        """
        draws = self.draws(device)
        if c > 20:
            return draws.coin((m, c, 1, 1), key)
        code = draws.randint(1, 2**c, (m, 1), key)
        bits = (code >> torch.arange(c, device=device)) & 1
        return bits.bool().view(m, c, 1, 1)

    def _init_linf(self, x: Tensor, key: tuple[int, ...] = ()) -> Tensor:
        n, c, _, w = x.shape
        low, high = self.bounds
        return (x + self.eps * self._signs((n, c, 1, w), x, key)).clamp(low, high)

    def _init_l2(self, x: Tensor, key: tuple[int, ...] = ()) -> Tensor:
        n, c, h, w = x.shape
        low, high = self.bounds
        s = max(min(h, w) // 5, 1)
        top0, left0 = max((h - 5 * s) // 2, 0), max((w - 5 * s) // 2, 0)
        block = centred_difference_block(s).to(device=x.device, dtype=x.dtype)
        delta = torch.zeros_like(x)
        for top in range(top0, h - s + 1, s):
            for left in range(left0, w - s + 1, s):
                signs = self._signs((n, c, 1, 1), x, (*key, top, left))
                delta[:, :, top : top + s, left : left + s] += block * signs
        norm = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        return (x + delta / norm * self.eps).clamp(low, high)

    def _step_linf(
        self, x: Tensor, x_best: Tensor, p: float, tables: _Tables, key: tuple[int, ...] = ()
    ) -> Tensor:
        """Candidate: one random window per example set to ``±eps`` per channel.

        ``tables`` holds the clipped corners ``x - eps`` and ``x + eps`` of the box (computed once
        per active set) and the window-row tables, so a step is a handful of batched ops.
        """
        m, c, h, w = x.shape
        s = min(max(round(math.sqrt(p * h * w)), 1), min(h, w))
        mask = tables.window_mask(
            s,
            self._positions(m, h - s, x.device, (*key, 0)),
            self._positions(m, w - s, x.device, (*key, 1)),
        )
        up = self.draws(x.device).coin((m, c, 1, 1), (*key, 2))
        cand = torch.where(mask, torch.where(up, tables.high, tables.low), x_best)
        # Where the window would not change, flip the signs by a uniformly drawn non-zero
        # pattern (a uniform redraw among the other sign vectors; free: no query is spent).
        for resample in range(_MAX_RESAMPLES):
            same = ~cand.ne(x_best).flatten(1).any(dim=1)
            if not bool(same.any()):
                break
            pattern = self._nonzero_pattern(m, c, x.device, (*key, 3, resample))
            flip = pattern & same.view(-1, 1, 1, 1)
            up = up ^ flip
            cand = torch.where(mask, torch.where(up, tables.high, tables.low), x_best)
        return cand

    def _step_l2(
        self, x: Tensor, x_best: Tensor, p: float, tables: _Tables, key: tuple[int, ...] = ()
    ) -> Tensor:
        """Candidate: a new centred-difference block in window 1, mass taken from window 2."""
        m, c, h, w = x.shape
        low, high = self.bounds
        eps = self.eps
        s = max(round(math.sqrt(p * h * w)), 3)
        s += 1 - s % 2  # odd side
        s = min(s, min(h, w))
        top1 = self._positions(m, h - s, x.device, (*key, 0))
        left1 = self._positions(m, w - s, x.device, (*key, 1))
        top2 = self._positions(m, h - s, x.device, (*key, 2))
        left2 = self._positions(m, w - s, x.device, (*key, 3))
        mask1 = tables.window_mask(s, top1, left1)
        mask2 = tables.window_mask(s, top2, left2)
        delta = x_best - x
        norm_img = delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        norm_win1 = (delta * mask1).pow(2).sum(dim=(2, 3), keepdim=True).sqrt()
        norm_union = (delta * (mask1 | mask2)).pow(2).sum(dim=(2, 3), keepdim=True).sqrt()
        block = centred_difference_block(s).to(device=x.device, dtype=x.dtype)
        flip = self._positions(m, 1, x.device, (*key, 4)).bool().view(-1, 1, 1, 1)
        blocks = torch.where(flip, block.t(), block).expand(m, c, s, s)
        idx1 = _window_index(top1, left1, s)
        old = delta[idx1[0], :, idx1[1], idx1[2]].permute(0, 3, 1, 2)  # (m, c, s, s)
        new = blocks * self._signs((m, c, 1, 1), x, (*key, 5)) + old / (norm_win1 + 1e-10)
        new_norm = new.pow(2).sum(dim=(2, 3), keepdim=True).sqrt().clamp_min(1e-12)
        budget = ((eps**2 - norm_img**2).clamp_min(0) / c + norm_union**2).sqrt()
        new = new / new_norm * budget
        delta = delta.masked_fill(mask2, 0.0)
        delta[idx1[0], :, idx1[1], idx1[2]] = new.permute(0, 2, 3, 1)
        norm = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        return (x + delta / norm * eps).clamp(low, high)

    # -- the search -----------------------------------------------------------------------------
    def _run(
        self, model: nn.Module, x: Tensor, y: Tensor, restart: int = 0
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One restart on ``(x, y)``; returns ``(x_best, loss_best, fooled)``.

        The search works on a compacted copy of the still-robust examples and writes it back
        only when one of them is fooled, so a step costs no gathers or scatters.
        """
        init = self._init_linf if self.norm == "linf" else self._init_l2
        step = self._step_linf if self.norm == "linf" else self._step_l2
        low, high = self.bounds
        x_best = init(x, (restart, -1))
        loss_best, fooled = self._score(model, x_best, y)
        i, last = 0, self.n_queries - 1
        while i < last:
            active = (~fooled).nonzero().squeeze(1)
            if active.numel() == 0:
                break
            xa, ya, xb, lb = x[active], y[active], x_best[active], loss_best[active]
            tables = _Tables(xa, self.eps, low, high, linf=self.norm == "linf")
            fooled_a = torch.zeros_like(ya, dtype=torch.bool)
            with self.narrow(active):  # the draws of the active set, fixed until it changes
                while i < last:
                    p = p_schedule(self.p_init, i, self.n_queries)
                    cand = step(xa, xb, p, tables, (restart, i))
                    i += 1
                    loss, fooled_a = self._score(model, cand, ya)
                    accept = (loss < lb) | fooled_a
                    xb = torch.where(accept.view(-1, 1, 1, 1), cand, xb)
                    lb = torch.where(accept, loss, lb)
                    if bool(fooled_a.any()):
                        break
            x_best[active] = xb
            loss_best[active] = lb
            fooled[active] = fooled_a
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
            for restart in range(self.restarts):
                todo = (~fooled).nonzero().squeeze(1)
                if todo.numel() == 0:
                    break
                with self.narrow(todo):
                    cand, loss, cand_fooled = self._run(model, x[todo], y[todo], restart)
                better = cand_fooled | (loss < best_loss[todo])
                idx = todo[better]
                x_adv[idx] = cand[better]
                best_loss[idx] = loss[better]
                fooled[idx] = cand_fooled[better]
            # Float safety: the search stays in the ball and box by construction.
            return self.threat.project(x_adv, x)
