"""PreActResNet18 and WideResNet: shapes, parameter counts, normalisation inside, bounds."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from advtrain.certify import crown_bounds, interval_bounds
from advtrain.models import Normalize, PreActResNet18, WideResNet
from advtrain.models.resnet import CIFAR10_MEAN, CIFAR10_STD, PreActBlock, count_parameters


@pytest.fixture(autouse=True)
def _one_thread():
    """These tests use tiny tensors: one thread avoids contention on a shared CI machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_preact_resnet18_forward_shape_and_normalisation():
    torch.manual_seed(0)
    model = PreActResNet18(num_classes=7, width=4).eval()
    x = torch.rand(3, 3, 32, 32)
    assert model(x).shape == (3, 7)
    assert isinstance(model.normalize, Normalize)
    torch.testing.assert_close(model.normalize.mean.flatten(), torch.tensor(CIFAR10_MEAN))
    torch.testing.assert_close(model.normalize.std.flatten(), torch.tensor(CIFAR10_STD))
    # The model normalises internally: feeding pixels equals conv1 on normalised pixels.
    manual = model.conv1((x - model.normalize.mean) / model.normalize.std)
    torch.testing.assert_close(model.conv1(model.normalize(x)), manual)


def test_default_sizes_match_the_published_architectures():
    # Rice et al. / Wong et al. PreActResNet-18 (with the final BatchNorm) and TRADES WRN-34-10.
    assert count_parameters(PreActResNet18()) == 11_172_170
    assert count_parameters(WideResNet(depth=16, widen_factor=4)) == 2_748_890


@pytest.mark.slow
def test_wrn_34_10_parameter_count():
    assert count_parameters(WideResNet()) == 46_160_474


def test_wide_resnet_small_forward_and_structure():
    torch.manual_seed(0)
    model = WideResNet(depth=10, widen_factor=1, num_classes=5, dropout=0.3)
    x = torch.rand(2, 3, 32, 32)
    assert model(x).shape == (2, 5)
    assert len(model.block1) == len(model.block2) == len(model.block3) == 1
    block = model.block2[0]
    assert block.equal_in_out is False and block.conv_shortcut.stride == (2, 2)
    assert isinstance(block.dropout, nn.Dropout) and block.dropout.p == 0.3
    model16 = WideResNet(depth=16, widen_factor=2)
    assert len(model16.block2) == 2 and model16.block2[1].equal_in_out
    # Dropout is random in train mode and off in eval mode.
    model.eval()
    torch.testing.assert_close(model(x), model(x))


def test_preact_block_shortcuts():
    torch.manual_seed(0)
    same = PreActBlock(4, 4, stride=1).eval()
    down = PreActBlock(4, 8, stride=2).eval()
    assert not same.has_projection and down.has_projection
    x = torch.randn(2, 4, 8, 8)
    assert same(x).shape == (2, 4, 8, 8) and down(x).shape == (2, 8, 4, 4)
    # Identity shortcut: the block is x + residual(x).
    out = same(x)
    residual = same.conv2(same.relu2(same.bn2(same.conv1(same.relu1(same.bn1(x))))))
    torch.testing.assert_close(out, x + residual)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"depth": 12}, "6n"),
        ({"depth": 4}, "depth"),
        ({"widen_factor": 0}, "widen_factor"),
        ({"dropout": 1.0}, "dropout"),
        ({"num_classes": 1}, "num_classes"),
    ],
)
def test_wide_resnet_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        WideResNet(**kwargs)


def test_preact_argument_errors():
    with pytest.raises(ValueError, match="width"):
        PreActResNet18(width=0)


@pytest.mark.parametrize(
    "factory", [lambda: PreActResNet18(width=2), lambda: WideResNet(depth=10, widen_factor=1)]
)
def test_ibp_bounds_on_small_residual_models(factory):
    torch.manual_seed(0)
    model = factory().eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    x = torch.rand(2, 3, 32, 32)
    y = torch.tensor([1, 4])
    eps = 2 / 255
    lower, upper = interval_bounds(model, x, eps, labels=y)
    assert lower.shape == (2, 10) and (lower[torch.arange(2), y] == 0).all()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _ in range(4):
            delta = (torch.rand(x.shape, generator=gen) * 2 - 1) * eps
            z = model((x + delta).clamp(0, 1))
            margins = z.gather(1, y[:, None]) - z
            tol = 1e-4 * (1 + upper.abs().max())
            assert (margins >= lower - tol).all() and (margins <= upper + tol).all()
    # CROWN-IBP handles the residual blocks too, and is tighter than IBP here.
    c_lower, _ = crown_bounds(model, x, eps, labels=y, intermediate="ibp")
    assert c_lower.sum() >= lower.sum()


def test_bounds_refuse_residual_models_in_training_mode():
    model = PreActResNet18(width=2).train()
    with pytest.raises(ValueError, match="training mode"):
        interval_bounds(model, torch.rand(1, 3, 32, 32), 1 / 255)
