"""``model_state_guard``: the attack's modes inside the block, everything restored exactly after,
and a module's own ``train()`` / ``__setattr__`` honoured where it has one."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from advtrain.modes import model_state_guard


def net() -> nn.Sequential:
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 3))


def flags(model: nn.Module) -> list[bool]:
    return [m.training for m in model.modules()]


@pytest.mark.parametrize("bn_mode", ["eval", "train", "train_frozen"])
def test_mixed_modes_are_restored_exactly(bn_mode: str) -> None:
    model = net()
    model[1].eval()  # a frozen BatchNorm inside a training model
    model[3].train(False)
    before = flags(model)
    with model_state_guard(model, bn_mode):
        inside = flags(model)
        assert all(not p.requires_grad for p in model.parameters())
    expected = {"eval": [False] * 5, "train": before, "train_frozen": [True] * 5}[bn_mode]
    assert inside == expected
    assert flags(model) == before
    assert all(p.requires_grad for p in model.parameters())


def test_restored_when_the_block_raises() -> None:
    model = net()
    before = flags(model)
    with pytest.raises(RuntimeError, match="boom"), model_state_guard(model, "eval"):
        raise RuntimeError("boom")
    assert flags(model) == before


class FrozenNormNet(nn.Module):
    """Overrides ``train()`` to keep its BatchNorm in eval mode (a common fine-tuning idiom)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = net()
        self.calls: list[bool] = []

    def train(self, mode: bool = True) -> FrozenNormNet:
        self.calls.append(mode)
        super().train(mode)
        self.body[1].eval()
        return self


def test_an_overridden_train_is_called() -> None:
    model = FrozenNormNet()
    model.train()
    model.calls.clear()
    with model_state_guard(model, "train_frozen"):
        assert model.calls == [True]
        assert not model.body[1].training, "the module's own train() kept its BatchNorm frozen"
        assert model.body[0].training
    with model_state_guard(model, "eval"):
        assert model.calls == [True, False]
        assert not any(flags(model))
    assert flags(model) == [True, True, True, False, True, True]


class SetattrRecordingNet(nn.Module):
    """Overrides ``__setattr__`` (and sees every ``training`` assignment)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[Any] = []
        self.layer = nn.Linear(2, 2)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "training" and "seen" in self.__dict__:
            self.seen.append(value)
        super().__setattr__(name, value)


def test_an_overridden_setattr_sees_the_mode_changes() -> None:
    model = SetattrRecordingNet()
    with model_state_guard(model, "eval"):
        assert not model.training
    assert model.training
    assert model.seen == [False, True]


def test_gradients_are_left_as_they_were() -> None:
    model = net()
    model(torch.randn(5, 4)).sum().backward()
    grads = [p.grad for p in model.parameters()]
    with model_state_guard(model, "eval"):
        model(torch.randn(5, 4)).sum()
    assert all(p.grad is g for p, g in zip(model.parameters(), grads, strict=True))
