"""CIFAR-10 residual networks: PreActResNet-18 and WideResNet, with normalisation inside.

Both take ``3×32×32`` images in ``[0, 1]`` and start with :class:`Normalize`, so attack and
certificate radii stay in pixel units (``eps = 8/255`` is eight grey levels). The blocks are
plain ``torch.fx``-traceable modules, so :func:`advtrain.certify.interval_bounds` (IBP) and
:func:`advtrain.certify.crown_bounds` propagate bounds through them, residual additions included.

References:
    He, Zhang, Ren & Sun, "Identity Mappings in Deep Residual Networks", ECCV 2016 (pre-activation
    blocks); the PreActResNet-18 of Wong, Rice & Kolter, "Fast is better than free", ICLR 2020 and
    Rice, Wong & Kolter, "Overfitting in adversarially robust deep learning", ICML 2020
    (64-128-256-512 channels, two blocks per stage, final BN-ReLU, 4×4 average pooling).
    Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016, in the form used by Madry et al.'s
    robustness code and TRADES (Zhang et al., ICML 2019): WRN-34-10 by default, widths
    16-16k-32k-64k, pre-activation basic blocks, dropout between the two convolutions.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from advtrain.models.normalize import Normalize

#: Per-channel statistics of the CIFAR-10 training set (pixels in [0, 1]).
CIFAR10_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: tuple[float, float, float] = (0.2471, 0.2435, 0.2616)


def _check_int(value: int, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


class PreActBlock(nn.Module):
    """Pre-activation basic block: ``x + conv(relu(bn(conv(relu(bn(x))))))``.

    When the block changes the resolution or the width, the shortcut is a 1×1 convolution applied
    to the *activated* input ``relu(bn1(x))`` (as in He et al. 2016 and Wong/Rice et al.);
    otherwise it is the identity on ``x``.

    Args:
        in_planes: Input channels.
        planes: Output channels.
        stride: Stride of the first convolution (and of the projection shortcut).
    """

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.has_projection = stride != 1 or in_planes != planes
        if self.has_projection:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(x))
        shortcut = self.shortcut(out) if self.has_projection else x
        out = self.conv1(out)
        out = self.conv2(self.relu2(self.bn2(out)))
        return out + shortcut


class PreActResNet18(nn.Module):
    """PreActResNet-18 for 32×32 images (He et al. 2016; the Wong et al. / Rice et al. version).

    ``Normalize → conv3×3(64) → 4 stages × 2 pre-activation blocks (64, 128, 256, 512 channels,
    strides 1, 2, 2, 2) → BN → ReLU → 4×4 average pool → linear``. About 11.2 M parameters at the
    default width. Published (Rice et al. 2020, PGD-10 training, eps 8/255): 82.9 % clean,
    53.5 % PGD accuracy at the best checkpoint.

    Args:
        num_classes: Number of outputs.
        mean: Per-channel mean of the :class:`Normalize` first layer (CIFAR-10 by default).
        std: Per-channel std of the :class:`Normalize` first layer.
        width: Channels of the first stage (64 in the paper; small values for tests). Stage
            ``i`` has ``width · 2^i`` channels.
        in_channels: Image channels.
    """

    def __init__(
        self,
        num_classes: int = 10,
        mean: Sequence[float] | float = CIFAR10_MEAN,
        std: Sequence[float] | float = CIFAR10_STD,
        width: int = 64,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        _check_int(num_classes, "num_classes", 2)
        _check_int(width, "width")
        _check_int(in_channels, "in_channels")
        self.num_classes = num_classes
        self.normalize = Normalize(mean, std)
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        planes = width
        layers: list[nn.Sequential] = []
        for stage, stride in enumerate((1, 2, 2, 2)):
            out_planes = width * 2**stage
            blocks = [PreActBlock(planes, out_planes, stride), PreActBlock(out_planes, out_planes)]
            layers.append(nn.Sequential(*blocks))
            planes = out_planes
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.bn = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.pool = nn.AvgPool2d(4)
        self.flatten = nn.Flatten()
        self.linear = nn.Linear(planes, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(self.normalize(x))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = self.pool(self.relu(self.bn(out)))
        return self.linear(self.flatten(out))


class WideBasicBlock(nn.Module):
    """The pre-activation basic block of the WideResNet in Madry et al.'s and TRADES' code.

    ``bn1 → relu → conv3×3(stride) → bn2 → relu → dropout → conv3×3``, added to the input when the
    shape is unchanged; otherwise to a 1×1 convolution of the *activated* input.

    Args:
        in_planes: Input channels.
        out_planes: Output channels.
        stride: Stride of the first convolution (and of the projection shortcut).
        dropout: Dropout probability between the convolutions (0 disables it).
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.equal_in_out = in_planes == out_planes and stride == 1
        if not self.equal_in_out:
            self.conv_shortcut = nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        act = self.relu1(self.bn1(x))
        out = self.conv2(self.dropout(self.relu2(self.bn2(self.conv1(act)))))
        shortcut = x if self.equal_in_out else self.conv_shortcut(act)
        return shortcut + out


class WideResNet(nn.Module):
    """WideResNet-``depth``-``widen_factor`` (Zagoruyko & Komodakis 2016) for 32×32 images.

    ``Normalize → conv3×3(16) → 3 groups of n = (depth − 4) / 6 blocks (16k, 32k, 64k channels,
    strides 1, 2, 2) → BN → ReLU → 8×8 average pool → linear``; convolutions use He (fan-out)
    initialisation, BatchNorm weight 1 and bias 0, linear bias 0, as in the TRADES code.
    WRN-34-10 (the default, ~46 M parameters) is the TRADES / Madry CIFAR-10 model: TRADES
    reports 84.92 % clean / 53.08 % AutoAttack accuracy at eps 8/255.

    Args:
        depth: Total depth, ``6n + 4`` (e.g. 10, 16, 28, 34).
        widen_factor: Width multiplier ``k``.
        num_classes: Number of outputs.
        dropout: Dropout probability inside the blocks (0.0 in TRADES/Madry).
        mean: Per-channel mean of the :class:`Normalize` first layer (CIFAR-10 by default).
        std: Per-channel std of the :class:`Normalize` first layer.
        in_channels: Image channels.

    Raises:
        ValueError: If ``depth`` is not of the form ``6n + 4`` or an argument is out of range.
    """

    def __init__(
        self,
        depth: int = 34,
        widen_factor: int = 10,
        num_classes: int = 10,
        dropout: float = 0.0,
        mean: Sequence[float] | float = CIFAR10_MEAN,
        std: Sequence[float] | float = CIFAR10_STD,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        _check_int(depth, "depth", 10)
        if (depth - 4) % 6 != 0:
            raise ValueError(f"depth must be 6n + 4 (10, 16, 22, 28, 34, ...), got {depth}")
        _check_int(widen_factor, "widen_factor")
        _check_int(num_classes, "num_classes", 2)
        _check_int(in_channels, "in_channels")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.depth, self.widen_factor, self.num_classes = depth, widen_factor, num_classes
        self.normalize = Normalize(mean, std)
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        groups: list[nn.Sequential] = []
        in_planes = widths[0]
        for out_planes, stride in zip(widths[1:], (1, 2, 2), strict=True):
            blocks = [
                WideBasicBlock(
                    in_planes if i == 0 else out_planes,
                    out_planes,
                    stride if i == 0 else 1,
                    float(dropout),
                )
                for i in range(n)
            ]
            groups.append(nn.Sequential(*blocks))
            in_planes = out_planes
        self.block1, self.block2, self.block3 = groups
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu = nn.ReLU()
        self.pool = nn.AvgPool2d(8)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(self.normalize(x))
        out = self.block3(self.block2(self.block1(out)))
        out = self.pool(self.relu(self.bn1(out)))
        return self.fc(self.flatten(out))


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "PreActBlock",
    "PreActResNet18",
    "WideBasicBlock",
    "WideResNet",
    "count_parameters",
]
