"""FAB: the fast adaptive boundary attack, untargeted and targeted (FAB-T).

References:
    Croce & Hein, "Minimally distorted adversarial examples with a fast adaptive boundary attack",
    ICML 2020. Each step linearises the decision boundary at the current iterate, projects both the
    iterate and the original point onto that hyperplane intersected with the input box, moves to a
    convex combination of the two projections (weight ``alpha`` on the original point, capped by
    ``alpha_max``), extrapolated by ``eta``; once the iterate is adversarial it is pulled back
    towards the original point by ``beta``. The smallest adversarial perturbation found is kept.
    Defaults: 100 iterations, ``alpha_max=0.1``, ``eta=1.05``, ``beta=0.9``; restarts start from a
    random point at distance ``eps / 2`` (half the smaller of ``eps`` and the best radius found,
    which here is always ``eps``: examples leave the search once a point within ``eps`` is found).
    Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
    parameter-free attacks", ICML 2020: AutoAttack "standard" runs FAB-T, the targeted version
    (linearising ``z_t - z_y`` for each of the 9 most likely other classes ``t``), one restart
    per target, 100 iterations.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from advtrain.attacks.base import Attack
from advtrain.modes import BNMode
from advtrain.validation import check_positive_int


def project_onto_hyperplane_box(
    p: Tensor, w: Tensor, c: Tensor, low: float, high: float, norm: str
) -> Tensor:
    """Smallest step ``d`` (in Linf or L2) with ``w·d = c`` and ``low <= p + d <= high``.

    The projection of FAB (Croce & Hein 2020, Sec. 3.1) of the point ``p`` onto the hyperplane
    ``{z : w·z = w·p + c}`` intersected with the box. After flipping signs so that ``c >= 0``,
    the solution is ``d_i = sign(w_i) · min(λ u_i, r_i)`` where ``r_i`` is the room the box leaves
    along ``sign(w_i)``, ``u_i = 1`` for Linf and ``u_i = |w_i|`` for L2 (from the KKT conditions),
    and ``λ >= 0`` is the smallest value with ``Σ |w_i| min(λ u_i, r_i) = c``: the left side is
    piecewise linear and non-decreasing in ``λ``, so sorting its breakpoints ``r_i / u_i`` gives
    ``λ`` exactly in ``O(n log n)``. If the box does not reach the hyperplane, the step goes as far
    towards it as the box allows.

    Args:
        p: Points, shape ``(batch, n)``, inside the box.
        w: Normals, shape ``(batch, n)``.
        c: Required change of ``w·z``, shape ``(batch,)``.
        low: Lower input bound.
        high: Upper input bound.
        norm: ``"linf"`` or ``"l2"``.

    Returns:
        The steps ``d``, shape ``(batch, n)``.
    """
    flip = torch.where(c < 0, -1.0, 1.0).to(w.dtype)
    w = w * flip[:, None]
    c = c * flip
    aw = w.abs()
    room = torch.where(w > 0, high - p, p - low).clamp_min(0)
    u = torch.ones_like(aw) if norm == "linf" else aw
    active = u > 0
    bp = torch.where(active, room / u.clamp_min(1e-30), torch.full_like(room, float("inf")))
    bp_sorted, order = bp.sort(dim=1)
    full = (aw * room).gather(1, order)  # contribution of a saturated coordinate
    slope = (aw * u).gather(1, order)  # d/dλ of an unsaturated coordinate's contribution
    saturated_before = full.cumsum(dim=1) - full  # Σ_{j<k}
    slope_from = slope.flip(1).cumsum(dim=1).flip(1)  # Σ_{j>=k}
    total = full.sum(dim=1)
    reach = torch.where(
        torch.isfinite(bp_sorted),
        saturated_before + bp_sorted.nan_to_num(posinf=0.0) * slope_from,
        total[:, None].expand_as(bp_sorted),
    )
    k = (reach < c[:, None]).sum(dim=1).clamp(max=bp.shape[1] - 1)
    a_k = saturated_before.gather(1, k[:, None]).squeeze(1)
    b_k = slope_from.gather(1, k[:, None]).squeeze(1)
    feasible = total >= c
    lam = ((c - a_k) / b_k.clamp_min(1e-30)).clamp_min(0)
    # Infeasible (or, through rounding, only reachable by saturating everything): go to the corner.
    lam = torch.where(feasible & (b_k > 0), lam, torch.full_like(lam, float("inf")))
    step = torch.minimum(lam[:, None] * u, room)
    step = torch.where(active, step, torch.zeros_like(step)).nan_to_num(0.0)
    return w.sign() * step


class FAB(Attack):
    """Fast adaptive boundary attack (Croce & Hein, ICML 2020); targeted by default (FAB-T).

    FAB searches for the *smallest* adversarial perturbation; this class turns it into an
    ``eps``-bounded attack: per example it returns the smallest adversarial example found if its
    norm is at most ``eps``, and the clean input otherwise (so the output is always in the ball and
    box). Examples that are misclassified to begin with are returned unchanged, and examples drop
    out of the search as soon as an adversarial point within ``eps`` is found.

    With ``targeted=True`` (FAB-T, as in AutoAttack "standard") the boundary to each of the
    ``n_target_classes`` most likely other classes is attacked in turn, ``restarts`` runs each;
    the untargeted version linearises every class and moves to the closest boundary, which costs
    one backward pass per class and step.

    Args:
        eps: Radius of the ball, in input units.
        norm: ``"linf"`` or ``"l2"``.
        steps: Iterations per run (paper: 100).
        restarts: Runs per target; runs after the first start from a random point.
        targeted: FAB-T (default) or untargeted FAB.
        n_target_classes: Targets of FAB-T, the most likely non-true classes (AutoAttack: 9); must
            be smaller than the model's number of classes.
        alpha_max: Cap of the weight on the original point's projection (paper: 0.1).
        eta: Extrapolation factor of the projection step (paper: 1.05).
        beta: Backward step towards the original point after a success (paper: 0.9).
        bounds: ``(low, high)`` of valid inputs.
        seed: Seed of the random restarts.
        bn_mode: BatchNorm behaviour during the attack (default ``"eval"``).
    """

    supported_norms = ("linf", "l2")

    def __init__(
        self,
        eps: float = 8 / 255,
        norm: str = "linf",
        steps: int = 100,
        restarts: int = 1,
        targeted: bool = True,
        n_target_classes: int = 9,
        alpha_max: float = 0.1,
        eta: float = 1.05,
        beta: float = 0.9,
        bounds: Sequence[float] = (0.0, 1.0),
        seed: int | None = None,
        bn_mode: BNMode = "eval",
    ) -> None:
        super().__init__(eps=eps, norm=norm, bounds=bounds, seed=seed, bn_mode=bn_mode)
        self.steps = check_positive_int(steps, "steps")
        self.restarts = check_positive_int(restarts, "restarts")
        self.targeted = bool(targeted)
        self.n_target_classes = check_positive_int(n_target_classes, "n_target_classes")
        self.alpha_max = _check_real(alpha_max, "alpha_max", 0.0, 1.0, "paper: 0.1")
        self.eta = _check_real(eta, "eta", 1.0, float("inf"), "paper: 1.05")
        self.beta = _check_real(beta, "beta", 0.0, 1.0, "paper: 0.9", low_open=True)

    @property
    def name(self) -> str:  # type: ignore[override]
        """``"fab-t"`` (targeted) or ``"fab"``."""
        return "fab-t" if self.targeted else "fab"

    def extra_repr(self) -> str:
        target = f", n_target_classes={self.n_target_classes}" if self.targeted else ""
        return (
            f"steps={self.steps}, restarts={self.restarts}, targeted={self.targeted}{target}, "
            f"alpha_max={self.alpha_max:g}, eta={self.eta:g}, beta={self.beta:g}"
        )

    # -- one linearisation ----------------------------------------------------------------------
    def _boundary(
        self, model: nn.Module, x: Tensor, y: Tensor, target: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """``(f, g)``: value and input gradient of ``z_t - z_y`` for the boundary to attack.

        Targeted: ``t`` is the given target. Untargeted: every class is linearised and the
        boundary closest in the dual norm (``|f_j| / ||g_j||_*``) is chosen.
        """
        x = x.detach().requires_grad_(True)
        logits = model(x).float()
        z_y = logits.gather(1, y[:, None]).squeeze(1)
        if not logits.requires_grad:
            # The model cuts the graph (detach, numpy): no gradient information, no move.
            f = (
                logits.max(dim=1).values - z_y
                if target is None
                else (logits.gather(1, target[:, None]).squeeze(1) - z_y)
            )
            return f.detach(), torch.zeros_like(x).flatten(1)
        if target is not None:
            f = logits.gather(1, target[:, None]).squeeze(1) - z_y
            (g,) = torch.autograd.grad(f.sum(), x)
            return f.detach(), g.flatten(1)
        n_classes = logits.shape[1]
        grads = []
        for j in range(n_classes):
            (gj,) = torch.autograd.grad(logits[:, j].sum(), x, retain_graph=j < n_classes - 1)
            grads.append(gj.flatten(1))
        jac = torch.stack(grads, dim=1)  # (batch, classes, n)
        rows = torch.arange(x.shape[0], device=x.device)
        f_all = (logits - z_y[:, None]).detach()
        g_all = jac - jac[rows, y][:, None, :]
        dual = g_all.abs().sum(dim=2) if self.norm == "linf" else g_all.norm(dim=2)
        dist = f_all.abs() / (dual + 1e-12)
        dist[rows, y] = float("inf")
        j_star = dist.argmin(dim=1)
        return f_all[rows, j_star], g_all[rows, j_star]

    # -- one run --------------------------------------------------------------------------------
    def _run(
        self,
        model: nn.Module,
        x0: Tensor,
        y: Tensor,
        target: Tensor | None,
        random_start: bool,
        key: tuple[int, ...] = (),
    ) -> tuple[Tensor, Tensor]:
        """One FAB run; returns ``(best adversarial or x0, its distance or inf)`` per example."""
        low, high = self.bounds
        n = x0.shape[0]
        shape = (-1, *([1] * (x0.dim() - 1)))
        best = x0.clone()
        best_dist = torch.full((n,), float("inf"), device=x0.device, dtype=x0.dtype)
        x1 = x0.clone()
        if random_start:
            draws = self.draws(x0.device)
            if self.norm == "linf":
                t = 2 * draws.rand(x0.shape, x0.dtype, key) - 1
                t_norm = t.flatten(1).abs().amax(dim=1)
            else:
                t = draws.randn(x0.shape, x0.dtype, key)
                t_norm = t.flatten(1).norm(dim=1)
            x1 = (x0 + 0.5 * self.eps * t / t_norm.clamp_min(1e-12).view(shape)).clamp(low, high)
        active = torch.arange(n, device=x0.device)
        for _ in range(self.steps):
            xa, xo, ya = x1[active], x0[active], y[active]
            ta = None if target is None else target[active]
            f, g = self._boundary(model, xa, ya, ta)
            with torch.no_grad():
                f, g = f.to(xa.dtype), g.to(xa.dtype)
                pa, po = xa.flatten(1), xo.flatten(1)
                # The hyperplane f + g·(z - xa) = 0, reached from the iterate and from the origin.
                c_iter = -f
                c_orig = (g * (pa - po)).sum(dim=1) - f
                d = project_onto_hyperplane_box(
                    torch.cat([pa, po]),
                    torch.cat([g, g]),
                    torch.cat([c_iter, c_orig]),
                    low,
                    high,
                    self.norm,
                )
                d_iter, d_orig = d[: len(active)], d[len(active) :]
                a_iter = self.threat.distance(d_iter, torch.zeros_like(d_iter)).clamp_min(1e-8)
                a_orig = self.threat.distance(d_orig, torch.zeros_like(d_orig)).clamp_min(1e-8)
                alpha = (a_iter / (a_iter + a_orig)).clamp(0.0, self.alpha_max)[:, None]
                z = (pa + self.eta * d_iter) * (1 - alpha) + (po + self.eta * d_orig) * alpha
                x_new = z.clamp(low, high).view_as(xa)
                is_adv = model(x_new).argmax(dim=1) != ya
                dist = self.threat.distance(x_new, xo)
                better = is_adv & (dist < best_dist[active])
                best[active[better]] = x_new[better]
                best_dist[active[better]] = dist[better]
                # Backward step: pull successful iterates towards the original point.
                x_new = torch.where(is_adv.view(shape), xo + self.beta * (x_new - xo), x_new)
                x1[active] = x_new
                active = active[best_dist[active] > self.eps]
            if active.numel() == 0:
                break
        return best, best_dist

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        with torch.no_grad():
            logits = model(x)
        self.check_logits(logits, y)
        n_classes = logits.shape[1]
        if self.targeted and self.n_target_classes >= n_classes:
            raise ValueError(
                f"n_target_classes={self.n_target_classes} but the model has {n_classes} classes, "
                f"so there are only {n_classes - 1} other classes to target; pass "
                f"n_target_classes <= {n_classes - 1}"
            )
        x_adv = x.clone()
        robust = logits.argmax(dim=1) == y
        runs: list[Tensor | None]
        if self.targeted:
            others = logits.detach().float().scatter(1, y[:, None], float("-inf"))
            targets = others.topk(self.n_target_classes, dim=1).indices
            runs = [targets[:, k] for k in range(self.n_target_classes)]
        else:
            runs = [None]
        for run, target in enumerate(runs):
            for restart in range(self.restarts):
                todo = robust.nonzero().squeeze(1)
                if todo.numel() == 0:
                    return x_adv
                t = None if target is None else target[todo]
                with self.narrow(todo):
                    cand, dist = self._run(model, x[todo], y[todo], t, restart > 0, (run, restart))
                ok = dist <= self.eps
                x_adv[todo[ok]] = cand[ok]
                robust[todo[ok]] = False
        # Float safety only: successful points are within eps by the check above.
        return self.threat.project(x_adv, x)


def _check_real(
    value: float, name: str, low: float, high: float, hint: str, low_open: bool = False
) -> float:
    """Validates a real hyperparameter in ``[low, high]`` (``(low, high]`` if ``low_open``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    bad_low = value <= low if low_open else value < low
    if bad_low or value > high or value != value:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}]"
        raise ValueError(f"{name} must lie in {interval}, got {value} ({hint})")
    return value
