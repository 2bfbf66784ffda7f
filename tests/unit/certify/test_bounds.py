"""Interval bounds (IBP) and CROWN / CROWN-IBP: soundness, exactness, references, errors."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from bounds_helpers import (
    CONV_KINDS,
    CROWN_CONV_KINDS,
    CROWN_DENSE_KINDS,
    DENSE_KINDS,
    PATCH_KINDS,
    Residual,
    attacked_points,
    crown_lp_reference,
    manual_final_crown,
    points_in_set,
    random_net,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from advtrain.certify import crown_bounds, interval_bounds, margin_spec, verified
from advtrain.certify.lowering import build_graph
from advtrain.certify.ops import AffineOp, RunContext
from advtrain.models import MLP, Normalize, PreActResNet18, SmallCNN

TOL = 1e-5
BOX = (0.0, 1.0)
PROPERTY = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)


@pytest.fixture(autouse=True)
def _one_thread():
    """These tests use tiny tensors: one thread avoids contention on a shared CI machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _inputs(seed: int, shape: tuple[int, ...] = (2, 6, 6), batch: int = 3) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand((batch, *shape), generator=gen, dtype=torch.float64)
    x[0].clamp_(0.0, 0.05)  # an example pressed against the box, so clipping matters
    return x


def _assert_inside(values: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor) -> None:
    """``values`` (``(..., B, K)``) lie in ``[lower, upper]`` up to TOL."""
    below = (lower - values).max().item()
    above = (values - upper).max().item()
    assert below <= TOL, f"a value is {below:.3g} below its lower bound"
    assert above <= TOL, f"a value is {above:.3g} above its upper bound"


def _check_sound(
    model: nn.Module,
    x: torch.Tensor,
    eps: float,
    norm: str,
    lower: torch.Tensor,
    upper: torch.Tensor,
    labels: torch.Tensor | None,
    seed: int,
) -> None:
    k = model(x[:1]).shape[1]
    spec = (
        margin_spec(labels, k, x.dtype)
        if labels is not None
        else torch.eye(k, dtype=x.dtype).expand(x.shape[0], k, k)
    )
    with torch.no_grad():
        pts = points_in_set(x, eps, norm, BOX, 12, seed)
        vals = torch.stack([model(p) for p in pts])  # (n, B, K)
        vals = (spec.unsqueeze(0) @ vals.unsqueeze(-1)).squeeze(-1)
        _assert_inside(vals, lower, upper)
    x_min, x_max = attacked_points(model, x, eps, norm, BOX, spec, steps=8)
    with torch.no_grad():
        for s in range(spec.shape[1]):
            for adv, side in ((x_min[s], "min"), (x_max[s], "max")):
                v = (spec[:, s] * model(adv)).sum(dim=1)
                if side == "min":
                    assert (v >= lower[:, s] - TOL).all()
                else:
                    assert (v <= upper[:, s] + TOL).all()
    # And the margins of the clean-loss PGD (CW) point, for good measure.
    if labels is not None:
        from advtrain.attacks import PGD

        adv = PGD(eps=eps, norm=norm, steps=8, loss="cw", bounds=BOX, seed=1)(model, x, labels)
        with torch.no_grad():
            z = model(adv)
            margins = z.gather(1, labels[:, None]) - z
        _assert_inside(margins, lower, upper)


conv_kinds = st.lists(st.sampled_from(CONV_KINDS), min_size=1, max_size=5)
dense_kinds = st.lists(st.sampled_from(DENSE_KINDS), max_size=4)
crown_conv_kinds = st.lists(st.sampled_from(CROWN_CONV_KINDS), min_size=1, max_size=4)
crown_dense_kinds = st.lists(st.sampled_from(CROWN_DENSE_KINDS), max_size=3)
eps_values = st.sampled_from([0.0, 0.01, 0.05, 0.2])


# ------------------------------------------------------------------------------------------------
# Soundness over random networks
# ------------------------------------------------------------------------------------------------
@PROPERTY
@given(
    conv_kinds,
    dense_kinds,
    st.integers(0, 10_000),
    eps_values,
    st.sampled_from(["linf", "l2"]),
    st.booleans(),
)
def test_ibp_is_sound_on_random_networks(convs, denses, seed, eps, norm, with_labels):
    model = random_net(convs, denses, seed)
    x = _inputs(seed)
    labels = torch.tensor([0, 1, 3]) if with_labels else None
    lower, upper = interval_bounds(model, x, eps, norm=norm, bounds=BOX, labels=labels)
    assert lower.shape == upper.shape == (3, 4)
    assert (lower <= upper + 1e-12).all()
    _check_sound(model, x, eps, norm, lower, upper, labels, seed)


@PROPERTY
@given(
    crown_conv_kinds,
    crown_dense_kinds,
    st.integers(0, 10_000),
    eps_values,
    st.sampled_from(["linf", "l2"]),
    st.booleans(),
    st.sampled_from(["crown", "ibp"]),
)
def test_crown_is_sound_on_random_networks(convs, denses, seed, eps, norm, with_labels, inter):
    model = random_net(convs, denses, seed)
    x = _inputs(seed)
    labels = torch.tensor([2, 0, 1]) if with_labels else None
    lower, upper = crown_bounds(
        model, x, eps, norm=norm, bounds=BOX, labels=labels, intermediate=inter
    )
    assert lower.shape == upper.shape == (3, 4)
    _check_sound(model, x, eps, norm, lower, upper, labels, seed)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_bounds_are_sound_in_float32(norm):
    torch.manual_seed(0)
    model = SmallCNN((1, 8, 8), 10, width=8, hidden=16).eval()
    x = torch.rand(4, 1, 8, 8)
    labels = torch.arange(4)
    for fn in (interval_bounds, crown_bounds):
        lower, upper = fn(model, x, 0.05, norm=norm, labels=labels)
        assert lower.dtype == torch.float32
        pts = points_in_set(x, 0.05, norm, BOX, 8, 0)
        with torch.no_grad():
            z = torch.stack([model(p) for p in pts])
            margins = z.gather(2, labels.view(1, -1, 1).expand(8, -1, 1)) - z
        scale = 1 + upper.abs().max().item()
        assert (margins >= lower - 1e-5 * scale).all() and (margins <= upper + 1e-5 * scale).all()


# ------------------------------------------------------------------------------------------------
# Exactness: eps = 0, linear networks, batch independence, chunking
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fn", [interval_bounds, crown_bounds])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_zero_eps_gives_the_logits(fn, norm):
    model = random_net(["conv", "bn", "relu", "maxpool", "residual"], ["linear", "bn1d", "relu"], 3)
    x = _inputs(3)
    lower, upper = fn(model, x, 0.0, norm=norm)
    z = model(x)
    torch.testing.assert_close(lower, z, atol=1e-10, rtol=0)
    torch.testing.assert_close(upper, z, atol=1e-10, rtol=0)
    labels = torch.tensor([1, 2, 3])
    lower, upper = fn(model, x, 0.0, norm=norm, labels=labels)
    margins = z.gather(1, labels[:, None]) - z
    torch.testing.assert_close(lower, margins, atol=1e-10, rtol=0)
    assert (lower.gather(1, labels[:, None]) == 0).all()


def _jacobian(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``(K, n)`` Jacobian of an affine model at one input."""
    jac = torch.autograd.functional.jacobian(lambda t: model(t.view(1, *x.shape[1:]))[0], x[0])
    return jac.reshape(jac.shape[0], -1)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_crown_is_exact_on_affine_networks(norm):
    # Normalize, convolutions (strided, grouped), BatchNorm, pooling, residual add: no ReLU.
    class Affine(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm = Normalize([0.3, 0.5], [0.2, 0.4])
            self.conv = nn.Conv2d(2, 4, 3, stride=2, padding=1)
            self.bn = nn.BatchNorm2d(4)
            self.conv2 = nn.Conv2d(4, 4, 3, padding=1, groups=2)
            self.pool = nn.AvgPool2d(2, padding=1, count_include_pad=False)
            self.fc = nn.Linear(4 * 2 * 2, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.bn(self.conv(self.norm(x)))
            h = self.pool(h + 0.5 * self.conv2(h))
            return self.fc(torch.flatten(h, 1))

    torch.manual_seed(0)
    model = Affine().double().eval()
    with torch.no_grad():
        model.bn.running_var.uniform_(0.5, 2.0)
        model.bn.running_mean.normal_()
    x = _inputs(1)
    eps = 0.1
    lower, upper = crown_bounds(model, x, eps, norm=norm)
    for b in range(x.shape[0]):
        J = _jacobian(model, x[b : b + 1])
        z = model(x[b : b + 1])[0]
        if norm == "linf":
            xl = (x[b] - eps).clamp(min=0).flatten()
            xu = (x[b] + eps).clamp(max=1).flatten()
            c = z + J @ ((xu + xl) / 2 - x[b].flatten())
            r = J.abs() @ ((xu - xl) / 2)
        else:
            c, r = z, eps * J.norm(dim=1)
        torch.testing.assert_close(lower[b], c - r, atol=1e-9, rtol=0)
        torch.testing.assert_close(upper[b], c + r, atol=1e-9, rtol=0)


def test_affine_operators_are_adjoint():
    """``<A, M x> = <A M, x>`` for every affine operator's transpose (conv, pools, BN, ...)."""
    model = random_net(
        ["conv", "conv_s2", "bn", "avgpool", "conv1x1"], ["linear", "bn1d"], 5, in_shape=(2, 9, 7)
    )
    x = torch.rand(2, 2, 9, 7, dtype=torch.float64)
    graph = build_graph(model, x)
    ctx = RunContext()
    values = [x]
    for node in graph.nodes[1:]:
        values.append(node.op.forward(ctx, *[values[j] for j in node.inputs]))
    checked = 0
    for node in graph.nodes[1:]:
        if not isinstance(node.op, AffineOp):
            continue
        inp = torch.randn(2, *graph.nodes[node.inputs[0]].shape, dtype=torch.float64)
        A = torch.randn(2, 3, *node.shape, dtype=torch.float64)
        zero = node.op.apply(ctx, torch.zeros_like(inp))
        lhs = (A * (node.op.apply(ctx, inp) - zero).unsqueeze(1)).flatten(2).sum(-1)
        rhs = (node.op.transpose(ctx, A) * inp.unsqueeze(1)).flatten(2).sum(-1)
        torch.testing.assert_close(lhs, rhs, atol=1e-9, rtol=1e-9)
        bias = node.op.bias_term(ctx, A)
        if bias is not None:
            torch.testing.assert_close(bias, (A * zero.unsqueeze(1)).flatten(2).sum(-1))
        checked += 1
    assert checked >= 7


@pytest.mark.parametrize("fn", [interval_bounds, crown_bounds])
def test_bounds_do_not_depend_on_the_batch(fn):
    model = random_net(["conv", "relu", "maxpool_overlap", "preact"], ["linear", "relu"], 8)
    x = _inputs(8, batch=4)
    labels = torch.tensor([0, 1, 2, 3])
    lower, upper = fn(model, x, 0.05, labels=labels)
    for b in range(4):
        lo, up = fn(model, x[b : b + 1], 0.05, labels=labels[b : b + 1])
        torch.testing.assert_close(lo[0], lower[b], atol=1e-10, rtol=0)
        torch.testing.assert_close(up[0], upper[b], atol=1e-10, rtol=0)


@settings(max_examples=20, deadline=None, derandomize=True)
@given(
    st.lists(st.sampled_from(PATCH_KINDS), min_size=2, max_size=6),
    st.integers(0, 10_000),
    st.sampled_from(["linf", "l2"]),
    st.booleans(),
)
def test_crown_patches_equal_full_feature_maps(kinds, seed, norm, normalize):
    model = random_net(
        [*kinds, "relu"], ["linear", "relu"], seed, in_shape=(2, 7, 7), normalize=normalize
    )
    x = _inputs(seed, shape=(2, 7, 7), batch=2)
    labels = torch.tensor([1, 3])
    dense = crown_bounds(model, x, 0.05, norm=norm, labels=labels, conv_mode="matrix")
    patches = crown_bounds(model, x, 0.05, norm=norm, labels=labels, conv_mode="patches")
    torch.testing.assert_close(patches[0], dense[0], atol=1e-10, rtol=0)
    torch.testing.assert_close(patches[1], dense[1], atol=1e-10, rtol=0)


@settings(max_examples=15, deadline=None, derandomize=True)
@given(conv_kinds, dense_kinds, st.integers(0, 10_000), st.sampled_from(["linf", "l2"]))
def test_bounds_without_autograd_equal_bounds_with_it(convs, denses, seed, norm):
    """Without autograd IBP reuses buffers in place; the numbers must not change."""
    model = random_net(["conv", "relu", *convs, "conv", "relu"], [*denses, "linear", "relu"], seed)
    x = _inputs(seed)
    labels = torch.tensor([0, 1, 2])
    with_grad = interval_bounds(model, x, 0.05, norm=norm, labels=labels)
    with torch.no_grad():
        without = interval_bounds(model, x, 0.05, norm=norm, labels=labels)
    torch.testing.assert_close(without[0], with_grad[0], atol=1e-12, rtol=0)
    torch.testing.assert_close(without[1], with_grad[1], atol=1e-12, rtol=0)


def _endpoint_ibp(model: nn.Sequential, x: torch.Tensor, eps: float, labels: torch.Tensor):
    """Textbook IBP in endpoint form (Gowal et al. 2018, Eq. 4-6), layer by layer, margins folded
    into the last linear layer: the reference for the centre/width implementation."""
    lo, hi = (x - eps).clamp(min=0.0), (x + eps).clamp(max=1.0)
    layers = list(model)
    unstable = 0
    for layer in layers[:-1]:
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            c, r = (hi + lo) / 2, (hi - lo) / 2
            if isinstance(layer, nn.Conv2d):
                kw = {"stride": layer.stride, "padding": layer.padding, "groups": layer.groups}
                c = F.conv2d(c, layer.weight, layer.bias, dilation=layer.dilation, **kw)
                r = F.conv2d(r, layer.weight.abs(), None, dilation=layer.dilation, **kw)
            else:
                c, r = F.linear(c, layer.weight, layer.bias), F.linear(r, layer.weight.abs())
            lo, hi = c - r, c + r
        elif isinstance(layer, nn.ReLU):
            unstable += int(((lo < 0) & (hi > 0)).sum())
            lo, hi = lo.clamp(min=0), hi.clamp(min=0)
        elif isinstance(layer, nn.Flatten):
            lo, hi = lo.flatten(1), hi.flatten(1)
        else:  # Normalize: increasing
            lo, hi = layer(lo), layer(hi)
    C = margin_spec(labels, layers[-1].out_features, x.dtype)
    W, b = C.matmul(layers[-1].weight), C.matmul(layers[-1].bias)
    c = W.matmul(((hi + lo) / 2).unsqueeze(-1)).squeeze(-1) + b
    r = W.abs().matmul(((hi - lo) / 2).unsqueeze(-1)).squeeze(-1)
    return c - r, c + r, unstable


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ibp_equals_endpoint_interval_arithmetic_with_gradients(seed):
    """IBP propagates centre/width boxes with an in-place ReLU (``width = min(relu(c + w/2),
    w)``): the bounds and their parameter gradients equal textbook endpoint arithmetic."""
    model = random_net(
        ["conv", "relu", "conv_s2", "relu", "conv_dilated", "relu"], ["linear", "relu"], seed
    )
    x = _inputs(seed)
    labels = torch.tensor([0, 1, 2])
    eps = 0.08
    *ref, unstable = _endpoint_ibp(model, x, eps, labels)
    got = interval_bounds(model, x, eps, labels=labels)
    with torch.no_grad():
        got_ng = interval_bounds(model, x, eps, labels=labels)
    for a, b, c in zip(got, got_ng, ref, strict=True):
        torch.testing.assert_close(a, c, atol=1e-12, rtol=1e-12)
        torch.testing.assert_close(b, c, atol=1e-12, rtol=1e-12)
    assert unstable > 0  # so every branch of the ReLU's box map is exercised
    params = [p for p in model.parameters()]
    loss = F.cross_entropy(-got[0], labels)
    loss_ref = F.cross_entropy(-ref[0], labels)
    grads = torch.autograd.grad(loss, params)
    grads_ref = torch.autograd.grad(loss_ref, params)
    for g, g_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g, g_ref, atol=1e-10, rtol=1e-9)


def test_crown_chunking_does_not_change_bounds():
    model = random_net(["conv", "relu", "conv", "relu"], ["linear", "relu"], 2)
    x = _inputs(2)
    ref = crown_bounds(model, x, 0.05, conv_mode="matrix")
    for chunk, mode in (
        (1, "matrix"),
        (7, "matrix"),
        (10_000, "matrix"),
        (5, "patches"),
        (None, "patches"),
    ):
        out = crown_bounds(model, x, 0.05, chunk_size=chunk, conv_mode=mode)
        torch.testing.assert_close(out[0], ref[0], atol=1e-10, rtol=0)
        torch.testing.assert_close(out[1], ref[1], atol=1e-10, rtol=0)


def test_batchnorm_is_folded_exactly():
    model = random_net(["conv", "bn"], ["bn1d"], 4)
    x = _inputs(4)
    lo, up = interval_bounds(model, x, 1e-3)
    z = model(x)
    assert (lo <= z).all() and (z <= up).all()
    # Widths are exactly linear in eps for an affine network (box: |M|·eps before clipping).
    x_mid = torch.full_like(x, 0.5)
    w1 = (lambda b: b[1] - b[0])(interval_bounds(model, x_mid, 1e-3))
    w2 = (lambda b: b[1] - b[0])(interval_bounds(model, x_mid, 2e-3))
    torch.testing.assert_close(w2, 2 * w1, atol=1e-12, rtol=1e-9)


# ------------------------------------------------------------------------------------------------
# CROWN against independent references
# ------------------------------------------------------------------------------------------------
def _one_hidden(seed: int, n: int = 6, h: int = 8, k: int = 3) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(n, h), nn.ReLU(), nn.Linear(h, k)).double().eval()


@settings(max_examples=20, deadline=None, derandomize=True)
@given(st.integers(0, 10_000), st.sampled_from([0.02, 0.1, 0.3]), st.booleans())
def test_crown_equals_lp_relaxation_on_one_hidden_layer(seed, eps, with_labels):
    model = _one_hidden(seed)
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(3, 6, generator=gen, dtype=torch.float64)
    labels = torch.tensor([0, 2, 1]) if with_labels else None
    lower, upper = crown_bounds(model, x, eps, labels=labels)
    W1, b1 = (t.detach().numpy() for t in (model[0].weight, model[0].bias))
    W2, b2 = (t.detach().numpy() for t in (model[2].weight, model[2].bias))
    C = margin_spec(labels, 3, x.dtype) if labels is not None else torch.eye(3).expand(3, 3, 3)
    for b in range(3):
        xl = np.maximum(x[b].numpy() - eps, 0.0)
        xu = np.minimum(x[b].numpy() + eps, 1.0)
        for s in range(3):
            lo, up = crown_lp_reference(W1, b1, W2, b2, xl, xu, C[b, s].double().numpy())
            assert math.isclose(lower[b, s].item(), lo, abs_tol=1e-7)
            assert math.isclose(upper[b, s].item(), up, abs_tol=1e-7)


def test_crown_l2_matches_closed_form_on_one_hidden_layer():
    model = _one_hidden(11)
    x = torch.rand(2, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    eps = 0.3
    lower, upper = crown_bounds(model, x, eps, norm="l2")
    W1, b1 = model[0].weight.detach(), model[0].bias.detach()
    pre_c = x @ W1.T + b1
    dev = eps * W1.norm(dim=1)
    pre = [((pre_c - dev).numpy(), (pre_c + dev).numpy())]
    weights = [(m.weight.detach().numpy(), m.bias.detach().numpy()) for m in (model[0], model[2])]
    lo, up = manual_final_crown(
        weights, pre, np.eye(3)[None].repeat(2, 0), x.numpy(), eps, "l2", BOX
    )
    np.testing.assert_allclose(lower.detach().numpy(), lo, atol=1e-9)
    np.testing.assert_allclose(upper.detach().numpy(), up, atol=1e-9)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_crown_composes_from_its_own_intermediate_bounds(norm):
    """Full CROWN = a manual final pass over CROWN bounds of the truncated network; CROWN-IBP =
    the same pass over IBP bounds of the truncated networks."""
    torch.manual_seed(3)
    model = MLP((1, 3, 3), 4, hidden=(7, 6)).double().eval()  # Flatten, L, ReLU, L, ReLU, L
    x = torch.rand(3, 1, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    labels = torch.tensor([0, 3, 1])
    eps = 0.15
    C = margin_spec(labels, 4, x.dtype).numpy()
    weights = [
        (m.weight.detach().numpy(), m.bias.detach().numpy())
        for m in model
        if isinstance(m, nn.Linear)
    ]
    xf = x.flatten(1).numpy()
    for method, fn in (("crown", crown_bounds), ("ibp", interval_bounds)):
        layers = list(model)
        pre1 = fn(nn.Sequential(*layers[:2]), x, eps, norm=norm)  # first layer: exact for both
        pre2 = fn(nn.Sequential(*layers[:4]), x, eps, norm=norm)
        pre = [(p[0].detach().numpy(), p[1].detach().numpy()) for p in (pre1, pre2)]
        lo, up = manual_final_crown(weights, pre, C, xf, eps, norm, BOX)
        got_lo, got_up = crown_bounds(model, x, eps, norm=norm, labels=labels, intermediate=method)
        np.testing.assert_allclose(got_lo.detach().numpy(), lo, atol=1e-9)
        np.testing.assert_allclose(got_up.detach().numpy(), up, atol=1e-9)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    st.integers(0, 10_000),
    st.sampled_from([0.05, 0.2, 0.5]),
    st.booleans(),
    st.sampled_from(["linf", "l2"]),
)
def test_crown_with_zero_lower_slope_is_never_looser_than_ibp(seed, eps, with_labels, norm):
    """On one-hidden-layer networks CROWN is guaranteed at least as tight as IBP when the lower
    slope of unstable ReLUs is 0 (each neuron's relaxation then contains IBP's worst case). For
    L2 the box is kept out of play (IBP intersects with it, CROWN uses the ball alone)."""
    model = _one_hidden(seed)
    gen = torch.Generator().manual_seed(seed)
    bounds = BOX if norm == "linf" else (-10.0, 10.0)
    x = torch.rand(4, 6, generator=gen, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 0]) if with_labels else None
    il, iu = interval_bounds(model, x, eps, norm=norm, bounds=bounds, labels=labels)
    cl, cu = crown_bounds(model, x, eps, norm=norm, bounds=bounds, labels=labels, relu_lower="zero")
    assert (cl >= il - 1e-9).all() and (cu <= iu + 1e-9).all()


def test_adaptive_crown_can_be_looser_than_ibp():
    """The adaptive slope is a heuristic: relu(x - 0.3) on x in [0, 1] has IBP lower bound 0,
    while CROWN picks slope 1 (u = 0.7 > -l = 0.3) and gets -0.3."""
    model = nn.Sequential(nn.Linear(1, 1), nn.ReLU(), nn.Linear(1, 1)).double()
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[0].bias.fill_(-0.3)
        model[2].weight.fill_(1.0)
        model[2].bias.fill_(0.0)
    x = torch.full((1, 1), 0.5, dtype=torch.float64)
    assert interval_bounds(model, x, 0.5)[0].item() == pytest.approx(0.0)
    assert crown_bounds(model, x, 0.5)[0].item() == pytest.approx(-0.3)
    assert crown_bounds(model, x, 0.5, relu_lower="zero")[0].item() == pytest.approx(0.0)


def test_crown_ibp_uses_ibp_intermediate_bounds_on_convnets():
    model = random_net(["conv", "relu", "conv_s2", "relu"], ["linear", "relu"], 9)
    x = _inputs(9)
    labels = torch.tensor([0, 1, 2])
    crown_ibp = crown_bounds(model, x, 0.1, labels=labels, intermediate="ibp")
    full = crown_bounds(model, x, 0.1, labels=labels)
    ibp = interval_bounds(model, x, 0.1, labels=labels)
    # All three are sound; on this network full CROWN is the tightest on average.
    assert (full[0].mean() >= crown_ibp[0].mean()) and (full[0].mean() >= ibp[0].mean())


# ------------------------------------------------------------------------------------------------
# Residual models, API behaviour, errors
# ------------------------------------------------------------------------------------------------
def test_ibp_and_crown_ibp_on_a_preact_resnet():
    torch.manual_seed(0)
    model = PreActResNet18(width=2).eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_var.uniform_(0.5, 1.5)
    x = torch.rand(2, 3, 32, 32)
    labels = torch.tensor([3, 7])
    pts = points_in_set(x, 1 / 255, "linf", BOX, 4, 0)
    with torch.no_grad():
        z = torch.stack([model(p) for p in pts])
        margins = z.gather(2, labels.view(1, -1, 1).expand(4, -1, 1)) - z
    for fn, kw in ((interval_bounds, {}), (crown_bounds, {"intermediate": "ibp"})):
        lower, upper = fn(model, x, 1 / 255, labels=labels, **kw)
        tol = 1e-5 * (1 + upper.abs().max().item())  # float32
        assert (margins >= lower - tol).all() and (margins <= upper + tol).all()


def test_bounds_leave_the_model_and_inputs_untouched():
    model = random_net(["conv", "bn", "relu"], ["linear", "dropout", "relu"], 1)
    model[2].weight.grad = torch.ones_like(model[2].weight)
    model[1].weight.requires_grad_(False)
    state = copy.deepcopy(model.state_dict())
    flags = [m.training for m in model.modules()]
    req = [p.requires_grad for p in model.parameters()]
    x = _inputs(1)
    x_copy = x.clone()
    interval_bounds(model, x, 0.1, labels=torch.tensor([0, 1, 2]))
    crown_bounds(model, x, 0.1, norm="l2")
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key])
    assert [m.training for m in model.modules()] == flags
    assert [p.requires_grad for p in model.parameters()] == req
    assert torch.equal(model[2].weight.grad, torch.ones_like(model[2].weight))
    assert torch.equal(x, x_copy)


@pytest.mark.parametrize("fn", [interval_bounds, crown_bounds])
def test_bounds_carry_gradients_to_the_parameters(fn):
    model = random_net(["conv", "bn", "relu"], ["linear", "relu"], 2)
    x = _inputs(2)
    lower, _ = fn(model, x, 0.05, labels=torch.tensor([0, 1, 2]))
    lower.sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_bounds_follow_changes_to_the_model():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3)).double()
    x = torch.rand(2, 1, 2, 2, dtype=torch.float64)
    first = interval_bounds(model, x, 0.1)
    with torch.no_grad():
        model[1].weight.mul_(2)
    second = interval_bounds(model, x, 0.1)
    assert not torch.allclose(first[0], second[0])
    model[2] = nn.Tanh()  # structure change: the cached graph must be rebuilt
    lower, upper = interval_bounds(model, x, 0.1)
    z = model(x)
    assert (lower <= z).all() and (z <= upper).all()
    with pytest.raises(NotImplementedError, match="Tanh"):
        crown_bounds(model, x, 0.1)


def test_functional_and_nested_models_are_supported():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Sequential(nn.Conv2d(1, 3, 3, padding=1)), nn.ReLU())
            self.fc = nn.Linear(3 * 2 * 2, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = F.max_pool2d(self.body(x), 2)
            h = F.relu(h * 2.0 - 0.1)
            return self.fc(h.view(h.size(0), -1))

    model = Net().double().eval()
    x = torch.rand(3, 1, 4, 4, dtype=torch.float64)
    for fn in (interval_bounds, crown_bounds):
        lower, upper = fn(model, x, 0.1)
        _check_sound(model, x, 0.1, "linf", lower, upper, None, 0)


def test_a_bare_linear_layer_is_a_model():
    model = nn.Linear(3, 2).double()
    x = torch.rand(4, 3, dtype=torch.float64)
    for norm in ("linf", "l2"):
        il, iu = interval_bounds(model, x, 0.2, norm=norm, bounds=(-5, 5))
        cl, cu = crown_bounds(model, x, 0.2, norm=norm, bounds=(-5, 5))
        torch.testing.assert_close(il, cl)
        torch.testing.assert_close(iu, cu)


def test_ibp_l2_uses_the_row_norms_and_the_box():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2)).double()
    W = model[1].weight.detach()
    x = torch.full((1, 1, 2, 2), 0.5, dtype=torch.float64)
    lower, upper = interval_bounds(model, x, 0.1, norm="l2")
    z = model(x)
    torch.testing.assert_close(upper - z, 0.1 * W.norm(dim=1).view(1, -1))
    torch.testing.assert_close(z - lower, 0.1 * W.norm(dim=1).view(1, -1))
    # Near the corner of the box, the box is tighter than the ball for some outputs.
    x0 = torch.zeros_like(x)
    lo, up = interval_bounds(model, x0, 10.0, norm="l2")
    z0 = model(x0)
    box_up = z0 + W.clamp(min=0).sum(dim=1)
    box_lo = z0 + W.clamp(max=0).sum(dim=1)
    torch.testing.assert_close(up, torch.minimum(box_up, z0 + 10 * W.norm(dim=1)))
    torch.testing.assert_close(lo, torch.maximum(box_lo, z0 - 10 * W.norm(dim=1)))


def test_verified_helper():
    lower = torch.tensor([[0.0, 0.5, 0.1], [-0.1, 0.0, 0.3]])
    assert verified(lower, torch.tensor([0, 1])).tolist() == [True, False]


@pytest.mark.parametrize("fn", [interval_bounds, crown_bounds])
def test_argument_errors(fn):
    model = MLP((1, 2, 2), 3, hidden=(4,)).eval()
    x = torch.rand(2, 1, 2, 2)
    with pytest.raises(ValueError, match="eps"):
        fn(model, x, -0.1)
    with pytest.raises(ValueError, match="norm"):
        fn(model, x, 0.1, norm="l1")
    with pytest.raises(ValueError, match="bounds"):
        fn(model, x + 2, 0.1)
    with pytest.raises(ValueError, match="labels"):
        fn(model, x, 0.1, labels=torch.tensor([0, 5]))
    with pytest.raises(TypeError, match="integer"):
        fn(model, x, 0.1, labels=torch.tensor([0.0, 1.0]))
    with pytest.raises(TypeError, match="Module"):
        fn(lambda t: t, x, 0.1)


def test_crown_argument_errors():
    model = MLP((1, 2, 2), 3, hidden=(4,)).eval()
    x = torch.rand(2, 1, 2, 2)
    with pytest.raises(ValueError, match="intermediate"):
        crown_bounds(model, x, 0.1, intermediate="forward")
    with pytest.raises(ValueError, match="relu_lower"):
        crown_bounds(model, x, 0.1, relu_lower="optimized")
    with pytest.raises(ValueError, match="chunk_size"):
        crown_bounds(model, x, 0.1, chunk_size=0)
    with pytest.raises(ValueError, match="conv_mode"):
        crown_bounds(model, x, 0.1, conv_mode="dense")


@pytest.mark.parametrize(
    ("layer", "name"),
    [(nn.Softmax(dim=1), "Softmax"), (nn.GELU(), "GELU"), (nn.LeakyReLU(-0.5), "LeakyReLU")],
)
@pytest.mark.parametrize("fn", [interval_bounds, crown_bounds])
def test_unsupported_layers_are_named(fn, layer, name):
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), layer, nn.Linear(3, 2))
    with pytest.raises(TypeError, match=name):
        fn(model, torch.rand(2, 1, 2, 2), 0.1)


def test_unsupported_functional_operation_is_named():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.exp(self.fc(x.flatten(1)))

    with pytest.raises(TypeError, match="exp"):
        interval_bounds(Net(), torch.rand(2, 1, 2, 2), 0.1)


def test_crown_names_layers_it_cannot_relax():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.Sigmoid(), nn.Linear(3, 2))
    x = torch.rand(2, 1, 2, 2)
    interval_bounds(model, x, 0.1)  # fine for IBP
    with pytest.raises(NotImplementedError, match=r"2 \(Sigmoid\)"):
        crown_bounds(model, x, 0.1)


@pytest.mark.parametrize("fn", [interval_bounds, crown_bounds])
def test_batchnorm_and_dropout_in_training_mode_are_refused(fn):
    model = random_net(["conv", "bn", "relu"], ["linear"], 0).train()
    x = _inputs(0)
    with pytest.raises(ValueError, match=r"training mode.*model.eval\(\)"):
        fn(model, x, 0.1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.Dropout(0.5), nn.Linear(3, 2)).train()
    with pytest.raises(ValueError, match="Dropout"):
        fn(model, torch.rand(2, 1, 2, 2), 0.1)
    model[2].p = 0.0  # dropout with p = 0 is the identity even in training mode
    fn(model, torch.rand(2, 1, 2, 2), 0.1)


def test_untraceable_models_get_a_clear_error():
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:
                return self.fc(x)
            return -self.fc(x)

    with pytest.raises(TypeError, match="trace"):
        interval_bounds(Branchy(), torch.rand(2, 4), 0.1)


def test_models_must_return_logits():
    model = nn.Sequential(nn.Conv2d(1, 2, 3))
    with pytest.raises(ValueError, match="logits"):
        interval_bounds(model, torch.rand(2, 1, 4, 4), 0.1)


def test_residual_helper_block_is_traced_with_two_branches():
    model = nn.Sequential(Residual(2), nn.Flatten(), nn.Linear(2 * 3 * 3, 2)).double()
    graph = build_graph(model, torch.rand(1, 2, 3, 3, dtype=torch.float64))
    adds = [n for n in graph.nodes if len(n.inputs) == 2]
    assert len(adds) == 1


def test_bounds_under_inference_mode_and_with_grad_inputs():
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(4, 3), nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc2(torch.relu(self.fc1(x.flatten(1)) * 0.5 + 1.0))

    model = Scaled()
    with torch.inference_mode():
        x_inf = torch.rand(2, 1, 2, 2)
        lo_inf, _ = interval_bounds(model, x_inf, 0.1)
        crown_bounds(model, x_inf, 0.1)
    # The graph cached under inference mode still gives gradients afterwards.
    x = x_inf.clone().requires_grad_(True)
    for fn in (interval_bounds, crown_bounds):
        lower, _ = fn(model, x, 0.1)
        lower.sum().backward()
        assert model.fc1.weight.grad is not None and x.grad is None
    torch.testing.assert_close(interval_bounds(model, x, 0.1)[0], lo_inf)
