"""Small classifiers for embedded and MNIST-sized data: a CNN and an MLP.

Both are ``nn.Sequential`` of standard layers, so interval (IBP) and linear (CROWN) bound
propagation in :mod:`advtrain.certify.bounds` supports them as they are.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from advtrain.models.normalize import Normalize


def _check_shape(input_shape: Sequence[int]) -> tuple[int, int, int]:
    if len(input_shape) != 3 or any(int(s) < 1 for s in input_shape):
        raise ValueError(f"input_shape must be (channels, height, width), got {input_shape!r}")
    c, h, w = (int(s) for s in input_shape)
    return c, h, w


class SmallCNN(nn.Sequential):
    """Two 3×3 convolutions (the second with stride 2) and two linear layers, ReLU throughout.

    The "small" convolutional network of the certified-training literature (Gowal et al. 2018;
    Wong & Kolter 2018), sized by ``width``: conv(c→w, 3, s1) → conv(w→2w, 3, s2) → linear(→hidden)
    → linear(→classes).

    Args:
        input_shape: ``(channels, height, width)``, e.g. ``(1, 8, 8)`` for digits.
        num_classes: Number of outputs.
        width: Channels of the first convolution.
        hidden: Units of the hidden linear layer.
        mean: Optional normalisation mean (adds a :class:`Normalize` first layer).
        std: Optional normalisation std.
    """

    def __init__(
        self,
        input_shape: Sequence[int] = (1, 8, 8),
        num_classes: int = 10,
        width: int = 32,
        hidden: int = 128,
        mean: Sequence[float] | float | None = None,
        std: Sequence[float] | float | None = None,
    ) -> None:
        c, h, w = _check_shape(input_shape)
        h2, w2 = (h + 1) // 2, (w + 1) // 2
        layers: list[nn.Module] = []
        if mean is not None or std is not None:
            layers.append(
                Normalize(mean if mean is not None else 0.0, std if std is not None else 1.0)
            )
        layers += [
            nn.Conv2d(c, width, 3, stride=1, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(2 * width * h2 * w2, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        ]
        super().__init__(*layers)
        self.input_shape = (c, h, w)
        self.num_classes = num_classes


class MLP(nn.Sequential):
    """A fully connected ReLU network on flattened inputs.

    Args:
        input_shape: Shape of one input, e.g. ``(1, 8, 8)``; it is flattened first.
        num_classes: Number of outputs.
        hidden: Widths of the hidden layers.
        mean: Optional normalisation mean (a :class:`Normalize` before flattening).
        std: Optional normalisation std.
    """

    def __init__(
        self,
        input_shape: Sequence[int] = (1, 8, 8),
        num_classes: int = 10,
        hidden: Sequence[int] = (256, 256),
        mean: Sequence[float] | float | None = None,
        std: Sequence[float] | float | None = None,
    ) -> None:
        c, h, w = _check_shape(input_shape)
        layers: list[nn.Module] = []
        if mean is not None or std is not None:
            layers.append(
                Normalize(mean if mean is not None else 0.0, std if std is not None else 1.0)
            )
        layers.append(nn.Flatten())
        width = c * h * w
        for units in hidden:
            layers += [nn.Linear(width, int(units)), nn.ReLU()]
            width = int(units)
        layers.append(nn.Linear(width, num_classes))
        super().__init__(*layers)
        self.input_shape = (c, h, w)
        self.num_classes = num_classes
