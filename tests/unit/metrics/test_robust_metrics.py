"""RobustAccuracy / AttackSuccessRate metrics and their functional twins."""

from __future__ import annotations

import math

import pytest
import torch
from torchmetrics.utilities.data import dim_zero_sum

from advtrain.metrics import (
    AttackSuccessRate,
    RobustAccuracy,
    attack_success_rate,
    robust_accuracy,
)

#            0  1  2  3  4  5  6  7
Y = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
CLEAN = torch.tensor([0, 1, 2, 0, 0, 1, 1, 3])  # correct: 0 1 2 4 5 7  (6 of 8)
ADV = torch.tensor([0, 2, 2, 3, 1, 1, 2, 0])  # correct: 0 2 3 5 6     (5 of 8)
# correct both: 0 2 5 (3 of 8); fooled among clean-correct: 1 4 7 (3 of 6)


def one_hot_logits(classes: torch.Tensor, k: int = 4) -> torch.Tensor:
    return torch.nn.functional.one_hot(classes, k).float() * 3 - 1


def test_functional_values():
    assert robust_accuracy(ADV, Y).item() == pytest.approx(5 / 8)
    assert robust_accuracy(CLEAN, ADV, Y).item() == pytest.approx(3 / 8)
    assert attack_success_rate(ADV, Y).item() == pytest.approx(3 / 8)
    assert attack_success_rate(CLEAN, ADV, Y).item() == pytest.approx(3 / 6)


def test_logits_and_classes_agree():
    lc, la = one_hot_logits(CLEAN), one_hot_logits(ADV)
    assert robust_accuracy(lc, la, Y) == robust_accuracy(CLEAN, ADV, Y)
    assert robust_accuracy(CLEAN, la, Y) == robust_accuracy(CLEAN, ADV, Y)
    assert attack_success_rate(lc, la, Y) == attack_success_rate(CLEAN, ADV, Y)


def test_metrics_accumulate_like_the_functions():
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, 5, (200,), generator=gen)
    clean = torch.randn(200, 5, generator=gen)
    adv = torch.randn(200, 5, generator=gen)
    ra3, ra2, asr3, asr2 = (
        RobustAccuracy(),
        RobustAccuracy(),
        AttackSuccessRate(),
        AttackSuccessRate(),
    )
    for i in range(0, 200, 37):
        s = slice(i, i + 37)
        ra3.update(clean[s], adv[s], y[s])
        ra2.update(adv[s], y[s])
        asr3.update(clean[s], adv[s], y[s])
        asr2.update(adv[s], y[s])
    assert ra3.compute().item() == pytest.approx(robust_accuracy(clean, adv, y).item())
    assert ra2.compute().item() == pytest.approx(robust_accuracy(adv, y).item())
    assert asr3.compute().item() == pytest.approx(attack_success_rate(clean, adv, y).item())
    assert asr2.compute().item() == pytest.approx(attack_success_rate(adv, y).item())
    # Robust accuracy and success rate over the same examples are complementary.
    assert ra2.compute().item() + asr2.compute().item() == pytest.approx(1.0)
    ra3.reset()
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert math.isnan(ra3.compute().item())


def test_states_are_summed_across_processes():
    """Sum states: merging two processes' states equals one process seeing all batches."""
    a, b, both = RobustAccuracy(), RobustAccuracy(), RobustAccuracy()
    a.update(CLEAN[:5], ADV[:5], Y[:5])
    b.update(CLEAN[5:], ADV[5:], Y[5:])
    both.update(CLEAN, ADV, Y)
    for metric in (a, AttackSuccessRate()):
        assert all(fn is dim_zero_sum for fn in metric._reductions.values())
    a.merge_state(b)
    assert a.compute() == both.compute()
    s1, s2 = AttackSuccessRate(), AttackSuccessRate()
    s1.update(CLEAN[:3], ADV[:3], Y[:3])
    s2.update(CLEAN[3:], ADV[3:], Y[3:])
    s1.merge_state(s2)
    assert s1.compute().item() == pytest.approx(0.5)


def test_empty_and_nothing_to_attack_give_nan():
    empty = torch.zeros(0, dtype=torch.long)
    assert math.isnan(robust_accuracy(empty, empty).item())
    wrong = torch.tensor([1, 1])
    assert math.isnan(attack_success_rate(wrong, wrong, torch.tensor([0, 0])).item())
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert math.isnan(AttackSuccessRate().compute().item())


def test_bad_inputs():
    with pytest.raises(TypeError, match=r"\(adv, target\) or \(clean, adv, target\)"):
        robust_accuracy(Y)
    with pytest.raises(TypeError, match="integer class indices"):
        robust_accuracy(ADV, Y.float())
    with pytest.raises(ValueError, match="has 3 examples"):
        robust_accuracy(ADV[:3], Y)
    with pytest.raises(ValueError, match=r"logits \(N, C\)"):
        robust_accuracy(torch.rand(8), Y)
    with pytest.raises(TypeError, match="logits"):
        attack_success_rate(ADV.bool(), Y)
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        RobustAccuracy().update([0, 1], Y[:2])
