"""SmallCNN, MLP and Normalize: shapes, normalisation inside the model, validation."""

from __future__ import annotations

import pytest
import torch

from advtrain.models import MLP, Normalize, SmallCNN


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32), (3, 7, 9)])
def test_small_cnn_and_mlp_output_logits(shape: tuple[int, int, int]) -> None:
    x = torch.rand(5, *shape)
    assert SmallCNN(input_shape=shape, num_classes=7)(x).shape == (5, 7)
    assert MLP(input_shape=shape, num_classes=3, hidden=(16,))(x).shape == (5, 3)


def test_normalize_is_per_channel_and_inside_the_model() -> None:
    norm = Normalize(mean=[0.5, 0.25, 0.0], std=[0.5, 0.25, 1.0])
    x = torch.rand(2, 3, 4, 4)
    out = norm(x)
    assert torch.allclose(out[:, 0], (x[:, 0] - 0.5) / 0.5)
    assert torch.allclose(out[:, 1], (x[:, 1] - 0.25) / 0.25)
    model = SmallCNN(input_shape=(3, 4, 4), mean=[0.5, 0.25, 0.0], std=[0.5, 0.25, 1.0])
    assert isinstance(model[0], Normalize)
    # Buffers, not parameters: the optimiser never moves the normalisation.
    assert not any(p is norm.mean for p in norm.parameters()) and len(list(norm.parameters())) == 0


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="std must be > 0"):
        Normalize(0.5, 0.0)
    with pytest.raises(ValueError, match="same length"):
        Normalize([0.1, 0.2], [0.3])
    with pytest.raises(ValueError, match="input_shape"):
        SmallCNN(input_shape=(8, 8))
