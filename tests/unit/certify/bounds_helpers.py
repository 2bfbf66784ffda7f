"""Helpers for the bound-propagation tests: random networks, points of the input set, references.

* :func:`random_net` builds a small random network from a list of layer kinds (every layer the
  bound functions support, residual blocks included), with random BatchNorm statistics, in eval
  mode and float64.
* :func:`points_in_set` samples the ball ∩ box (uniform points, vertices of the Linf box) and
  :func:`attacked_points` adds PGD points that push each logit (or margin) to its extremes.
* :func:`crown_lp_reference` solves CROWN's one-hidden-layer relaxation as a linear program
  (scipy's HiGHS), independently of the library code.
* :func:`manual_final_crown` is a hand-written numpy backward pass for ReLU MLPs given
  intermediate bounds (used to check CROWN/CROWN-IBP composition).
* :func:`train_certified_digits` is the hand-written IBP/CROWN-IBP training loop on digits.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linprog
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import Tensor, nn

from advtrain.attacks import PGD
from advtrain.models import Normalize
from advtrain.models.resnet import PreActBlock
from advtrain.threat import ThreatModel

CONV_KINDS = (
    "conv",
    "conv_s2",
    "conv1x1",
    "conv_pad0",
    "conv_dilated",
    "conv_depthwise",
    "bn",
    "relu",
    "leaky",
    "tanh",
    "sigmoid",
    "avgpool",
    "maxpool",
    "maxpool_overlap",
    "gap",
    "residual",
    "preact",
    "identity",
    "dropout",
)
#: Layers the patches form of CROWN handles (chains of these from the input).
PATCH_KINDS = (
    "conv",
    "conv_s2",
    "conv1x1",
    "conv_pad0",
    "conv_dilated",
    "conv_depthwise",
    "bn",
    "relu",
    "leaky",
)
DENSE_KINDS = ("linear", "bn1d", "relu", "leaky", "tanh", "identity", "dropout")
#: Layers CROWN relaxes (tanh/sigmoid are IBP only).
CROWN_CONV_KINDS = tuple(k for k in CONV_KINDS if k not in ("tanh", "sigmoid"))
CROWN_DENSE_KINDS = tuple(k for k in DENSE_KINDS if k != "tanh")


class Residual(nn.Module):
    """``x + conv(relu(conv(x)))``: a post-activation residual block with the input's shape."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.relu(self.conv1(x)))


def _randomize_bn(m: nn.Module, gen: torch.Generator) -> None:
    for bn in m.modules():
        if isinstance(bn, nn.modules.batchnorm._BatchNorm):
            n = bn.num_features
            with torch.no_grad():
                bn.running_mean.copy_(torch.randn(n, generator=gen) * 0.3)
                bn.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                bn.weight.copy_(torch.randn(n, generator=gen) * 0.5 + 1.0)
                bn.bias.copy_(torch.randn(n, generator=gen) * 0.3)


def random_net(
    conv_kinds: Sequence[str],
    dense_kinds: Sequence[str],
    seed: int,
    in_shape: tuple[int, int, int] = (2, 6, 6),
    num_classes: int = 4,
    normalize: bool = True,
) -> nn.Sequential:
    """A random ``nn.Sequential`` (eval mode, float64) built from layer kinds.

    Layers that would shrink the feature map below 2×2 are skipped.
    """
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    c, h, w = in_shape
    layers: list[nn.Module] = []
    if normalize:
        mean = (torch.rand(c, generator=gen) * 0.5).tolist()
        std = (torch.rand(c, generator=gen) * 0.5 + 0.3).tolist()
        layers.append(Normalize(mean, std))
    for kind in conv_kinds:
        if kind == "conv":
            out = int(torch.randint(2, 5, (1,), generator=gen))
            layers.append(nn.Conv2d(c, out, 3, padding=1))
            c = out
        elif kind == "conv_s2" and h >= 4:
            out = int(torch.randint(2, 5, (1,), generator=gen))
            layers.append(nn.Conv2d(c, out, 3, stride=2, padding=1))
            c, h, w = out, (h + 1) // 2, (w + 1) // 2
        elif kind == "conv_pad0" and h >= 4:
            layers.append(nn.Conv2d(c, c + 1, 3))
            c, h, w = c + 1, h - 2, w - 2
        elif kind == "conv_dilated":
            layers.append(nn.Conv2d(c, c, 3, padding=2, dilation=2))
        elif kind == "conv_depthwise":
            layers.append(nn.Conv2d(c, 2 * c, 3, padding=1, groups=c))
            c = 2 * c
        elif kind == "conv1x1":
            layers.append(nn.Conv2d(c, c, 1))
        elif kind == "bn":
            layers.append(nn.BatchNorm2d(c))
        elif kind == "relu":
            layers.append(nn.ReLU())
        elif kind == "leaky":
            layers.append(nn.LeakyReLU(0.1))
        elif kind == "tanh":
            layers.append(nn.Tanh())
        elif kind == "sigmoid":
            layers.append(nn.Sigmoid())
        elif kind == "avgpool" and h >= 4:
            layers.append(nn.AvgPool2d(2))
            h, w = h // 2, w // 2
        elif kind == "maxpool" and h >= 4:
            layers.append(nn.MaxPool2d(2))
            h, w = h // 2, w // 2
        elif kind == "gap":  # global average pooling (adaptive)
            layers.append(nn.AdaptiveAvgPool2d(1))
            h = w = 1
        elif kind == "maxpool_overlap":
            layers.append(nn.MaxPool2d(3, stride=1, padding=1))
        elif kind == "residual":
            layers.append(Residual(c))
        elif kind == "preact":
            out = c + 1
            layers.append(PreActBlock(c, out, stride=1))
            c = out
        elif kind == "identity":
            layers.append(nn.Identity())
        elif kind == "dropout":
            layers.append(nn.Dropout(0.3))
    layers.append(nn.Flatten())
    width = c * h * w
    for kind in dense_kinds:
        if kind == "linear":
            out = int(torch.randint(3, 9, (1,), generator=gen))
            layers.append(nn.Linear(width, out))
            width = out
        elif kind == "bn1d":
            layers.append(nn.BatchNorm1d(width))
        elif kind == "relu":
            layers.append(nn.ReLU())
        elif kind == "leaky":
            layers.append(nn.LeakyReLU(0.2))
        elif kind == "tanh":
            layers.append(nn.Tanh())
        elif kind == "identity":
            layers.append(nn.Identity())
        elif kind == "dropout":
            layers.append(nn.Dropout(0.5))
    layers.append(nn.Linear(width, num_classes))
    net = nn.Sequential(*layers)
    _randomize_bn(net, gen)
    return net.double().eval()


def points_in_set(
    x: Tensor, eps: float, norm: str, bounds: tuple[float, float], n: int, seed: int
) -> Tensor:
    """``n`` points of the ball ∩ box per example, shape ``(n, B, ...)``.

    Linf: half uniform in the clipped box, half its vertices. L2: uniform in the ball, then
    projected onto the ball ∩ box (``ThreatModel.random_start``), plus points on the sphere.
    """
    gen = torch.Generator().manual_seed(seed)
    lo, hi = bounds
    threat = ThreatModel(norm=norm, eps=eps, bounds=bounds)
    pts = []
    if norm == "linf":
        x_l, x_u = (x - eps).clamp(min=lo), (x + eps).clamp(max=hi)
        for i in range(n):
            u = torch.rand(x.shape, generator=gen, dtype=x.dtype)
            if i % 2:
                u = (u > 0.5).to(x.dtype)
            pts.append(x_l + u * (x_u - x_l))
    else:
        for i in range(n):
            if i % 2:
                g = torch.randn(x.shape, generator=gen, dtype=x.dtype)
                g = g / g.flatten(1).norm(dim=1).view(-1, *([1] * (x.dim() - 1)))
                pts.append(threat.project(x + eps * g, x))
            else:
                pts.append(threat.random_start(x, gen))
    return torch.stack(pts)


class _Objective(nn.Module):
    """Two logits ``[t, 0]`` with ``t = sign·(C·model(x))_j`` (a per-example spec row)."""

    def __init__(self, model: nn.Module, rows: Tensor, sign: float) -> None:
        super().__init__()
        self.model, self.rows, self.sign = model, rows, sign

    def forward(self, x: Tensor) -> Tensor:
        t = self.sign * (self.model(x) * self.rows).sum(dim=1, keepdim=True)
        return torch.cat([t, torch.zeros_like(t)], dim=1)


def attacked_points(
    model: nn.Module,
    x: Tensor,
    eps: float,
    norm: str,
    bounds: tuple[float, float],
    spec: Tensor,
    steps: int = 10,
) -> tuple[Tensor, Tensor]:
    """PGD points pushing every spec row ``(C·z)_s`` down and up (advtrain's PGD, CE loss).

    Returns:
        ``(x_min, x_max)`` of shape ``(S, B, ...)``: the point found for each row and direction.
    """
    b = x.shape[0]
    s = spec.shape[1]
    xs = x.repeat(s, *([1] * (x.dim() - 1)))  # (S·B, ...), row-major over specs
    rows = spec.transpose(0, 1).reshape(s * b, -1)
    label = torch.zeros(s * b, dtype=torch.long)  # CE on class 0 = t rises the loss when t falls
    out = []
    for sign in (1.0, -1.0):
        attack = PGD(eps=eps, norm=norm, steps=steps, bounds=bounds, loss="ce", seed=0)
        adv = attack(_Objective(model, rows, sign), xs, label)
        out.append(adv.view(s, b, *x.shape[1:]))
    return out[0], out[1]


def crown_lp_reference(
    W1: np.ndarray,
    b1: np.ndarray,
    W2: np.ndarray,
    b2: np.ndarray,
    x_l: np.ndarray,
    x_u: np.ndarray,
    c: np.ndarray,
) -> tuple[float, float]:
    """CROWN's bounds on ``c·(W2·relu(W1·x + b1) + b2)`` over the box, solved as an LP.

    The pre-activation bounds are the exact interval of ``W1·x + b1`` over the box; each ReLU is
    relaxed by CROWN's adaptive lines (``y >= a·h`` with ``a = 1`` iff ``u > -l``, ``y <= u/(u-l)·
    (h - l)``; exact when stable). With the ``y_k`` otherwise free the LP optimum equals CROWN.
    """
    n, h = W1.shape[1], W1.shape[0]
    center, rad = (x_u + x_l) / 2, (x_u - x_l) / 2
    pre = W1 @ center + b1
    dev = np.abs(W1) @ rad
    lo, up = pre - dev, pre + dev
    # Inequalities in the variables (x, y): A_ub @ v <= b_ub.
    rows, rhs = [], []
    for k in range(h):
        if lo[k] >= 0:  # y = h
            rows += [np.r_[W1[k], -np.eye(h)[k]], np.r_[-W1[k], np.eye(h)[k]]]
            rhs += [-b1[k], b1[k]]
        elif up[k] <= 0:  # y = 0
            rows += [np.r_[np.zeros(n), np.eye(h)[k]], np.r_[np.zeros(n), -np.eye(h)[k]]]
            rhs += [0.0, 0.0]
        else:
            slope = up[k] / (up[k] - lo[k])
            # y <= slope·(W1 x + b1 - l)
            rows.append(np.r_[-slope * W1[k], np.eye(h)[k]])
            rhs.append(slope * (b1[k] - lo[k]))
            a = 1.0 if up[k] > -lo[k] else 0.0
            # y >= a·(W1 x + b1)
            rows.append(np.r_[a * W1[k], -np.eye(h)[k]])
            rhs.append(-a * b1[k])
    A_ub, b_ub = np.array(rows), np.array(rhs)
    bnds = [(float(a), float(b)) for a, b in zip(x_l, x_u, strict=True)] + [(None, None)] * h
    obj = np.r_[np.zeros(n), W2.T @ c]
    const = float(c @ b2)
    res_min = linprog(obj, A_ub=A_ub, b_ub=b_ub, bounds=bnds, method="highs")
    res_max = linprog(-obj, A_ub=A_ub, b_ub=b_ub, bounds=bnds, method="highs")
    assert res_min.status == 0 and res_max.status == 0
    return res_min.fun + const, -res_max.fun + const


def manual_final_crown(
    weights: Sequence[tuple[np.ndarray, np.ndarray]],
    pre_bounds: Sequence[tuple[np.ndarray, np.ndarray]],
    C: np.ndarray,
    x: np.ndarray,
    eps: float,
    norm: str,
    box: tuple[float, float],
) -> tuple[np.ndarray, np.ndarray]:
    """Hand-written CROWN backward pass for a ReLU MLP, given every pre-activation bound.

    Args:
        weights: ``[(W_1, b_1), ..., (W_L, b_L)]`` of the linear layers.
        pre_bounds: ``[(l_1, u_1), ..., (l_{L-1}, u_{L-1})]``, each ``(B, n_i)``.
        C: Spec ``(B, S, K)``.
        x: Inputs ``(B, n)``.
        eps, norm, box: The input set.

    Returns:
        ``(lower, upper)`` of shape ``(B, S)``.
    """
    B = x.shape[0]
    lowers, uppers = np.zeros((B, C.shape[1])), np.zeros((B, C.shape[1]))
    for b in range(B):
        for sign, out in ((-1, lowers), (1, uppers)):
            W_last, b_last = weights[-1]
            A = C[b] @ W_last
            const = C[b] @ b_last
            for layer in range(len(weights) - 2, -1, -1):
                lo, up = pre_bounds[layer][0][b], pre_bounds[layer][1][b]
                lb_r = np.minimum(lo, 0)
                ub_r = np.maximum(np.maximum(up, 0), lb_r + 1e-8)
                ud = ub_r / (ub_r - lb_r)
                ub = -lb_r * ud
                ld = (ud > 0.5).astype(float)
                pos, neg = np.maximum(A, 0), np.minimum(A, 0)
                if sign < 0:  # lower bound: positive coefficients take the lower line
                    const = const + neg @ ub
                    A = pos * ld + neg * ud
                else:
                    const = const + pos @ ub
                    A = pos * ud + neg * ld
                W, bias = weights[layer]
                const = const + A @ bias
                A = A @ W
            if norm == "linf":
                xl, xu = np.maximum(x[b] - eps, box[0]), np.minimum(x[b] + eps, box[1])
                val = A @ ((xu + xl) / 2) + sign * np.abs(A) @ ((xu - xl) / 2)
            else:
                val = A @ x[b] + sign * eps * np.linalg.norm(A, axis=1)
            out[b] = val + const
    return lowers, uppers


def digits_split() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Digits (1×8×8 in [0, 1]) as an 80/20 stratified split: ``x_tr, y_tr, x_te, y_te``."""
    d = load_digits()
    x = torch.tensor(d.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(d.target)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    return x_tr, y_tr, x_te, y_te


@functools.cache
def train_certified_digits(
    method: str,
    epochs: int,
    width: int = 16,
    hidden: int = 100,
    lr: float = 2e-3,
    eps: float = 0.1,
    seed: int = 0,
) -> tuple[nn.Module, float]:
    """A SmallCNN trained with IBPLoss or CROWNIBPLoss on digits (hand-written loop).

    Schedule (per step): a warm-up of 5 % of the steps at eps 0, kappa 1 (and beta 1), then over
    50 % of the steps eps ramps linearly to 1.1·``eps`` while kappa goes 1 → 0.5 and beta 1 → 0;
    Adam at ``lr``, divided by 10 for the last quarter of the epochs; batch 64. One thread.

    Returns:
        The model (eval mode, frozen) and the training time in seconds.
    """
    from advtrain.losses import CROWNIBPLoss, IBPLoss
    from advtrain.models import SmallCNN

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        x_tr, y_tr, _, _ = digits_split()
        torch.manual_seed(seed)
        model = SmallCNN((1, 8, 8), 10, width=width, hidden=hidden)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        loss_fn = IBPLoss(eps=0.0, kappa=1.0) if method == "ibp" else CROWNIBPLoss(eps=0.0)
        n, bs = x_tr.shape[0], 64
        total = epochs * ((n + bs - 1) // bs)
        warm, ramp = int(0.05 * total), int(0.5 * total)
        gen = torch.Generator().manual_seed(seed)
        step = 0
        start = time.perf_counter()
        model.train()
        for epoch in range(epochs):
            if epoch == int(0.75 * epochs):
                for group in opt.param_groups:
                    group["lr"] = lr / 10
            perm = torch.randperm(n, generator=gen)
            for i in range(0, n, bs):
                idx = perm[i : i + bs]
                p = min(max((step - warm) / ramp, 0.0), 1.0)
                loss_fn.eps, loss_fn.kappa = 1.1 * eps * p, 1.0 - 0.5 * p
                if isinstance(loss_fn, CROWNIBPLoss):
                    loss_fn.beta = 1.0 - p
                loss, _ = loss_fn(model, x_tr[idx], y_tr[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                step += 1
        elapsed = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
    model.eval()
    for prm in model.parameters():
        prm.requires_grad_(False)
    return model, elapsed
