"""Bounds under mixed precision: computed in float32 even inside ``torch.autocast``.

Lightning's ``bf16-mixed``/``16-mixed`` run validation (CertifiedEvaluation) and training steps
(IBPLoss, CROWNIBPLoss) under autocast; bounds computed in bfloat16/float16 can claim more than
the float32 model guarantees, so the certify functions switch autocast off.
"""

from __future__ import annotations

import pytest
import torch

from advtrain.certify import crown_bounds, interval_bounds
from advtrain.certify.ibp import compute_ibp
from advtrain.certify.spec import check_arguments
from advtrain.evaluation.units import bounds_unit
from advtrain.losses import CROWNIBPLoss, IBPLoss
from advtrain.models import SmallCNN
from advtrain.threat import ThreatModel

LOW_PRECISION = (torch.bfloat16, torch.float16)


def model_and_batch() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = SmallCNN(input_shape=(1, 8, 8), num_classes=10).eval()
    return model, torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))


def test_the_premise_autocast_changes_a_bound_computed_inside_it() -> None:
    """Without the switch (the undecorated function), bf16 autocast changes the IBP bounds and
    makes some lower bounds larger than float32's: a certificate could claim too much."""
    model, x, y = model_and_batch()
    inputs = check_arguments(model, x, 0.05, "linf", (0.0, 1.0))
    raw = compute_ibp.__wrapped__  # type: ignore[attr-defined]
    lower32, _ = raw(model, inputs, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lower16, _ = raw(model, inputs, y)
    assert lower16.dtype == torch.bfloat16
    assert int((lower16.float() > lower32 + 1e-6).sum()) > 10


@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("method", ["ibp", "crown_ibp", "crown"])
def test_bounds_under_autocast_equal_float32(dtype: torch.dtype, method: str) -> None:
    model, x, y = model_and_batch()

    def bounds() -> tuple[torch.Tensor, torch.Tensor]:
        if method == "ibp":
            return interval_bounds(model, x, 0.05, labels=y)
        intermediate = "ibp" if method == "crown_ibp" else "crown"
        return crown_bounds(model, x, 0.05, labels=y, intermediate=intermediate)

    lower32, upper32 = bounds()
    with torch.autocast("cpu", dtype=dtype):
        assert model(x).dtype == dtype  # autocast is active here ...
        lower, upper = bounds()  # ... and the bounds ignore it
    assert lower.dtype == upper.dtype == torch.float32
    assert torch.equal(lower, lower32) and torch.equal(upper, upper32)
    threat = ThreatModel("linf", 0.05, (0.0, 1.0))
    expected = bounds_unit(model, method, 0.05, x, y, threat, 256)["verified"]
    with torch.autocast("cpu", dtype=dtype):
        assert torch.equal(
            bounds_unit(model, method, 0.05, x, y, threat, 256)["verified"], expected
        )


@pytest.mark.parametrize("loss_cls", [IBPLoss, CROWNIBPLoss])
def test_certified_training_losses_bound_in_float32_under_autocast(loss_cls) -> None:
    model, x, y = model_and_batch()
    model.train()
    loss_fn = loss_cls(eps=0.05)
    loss32, logs32 = loss_fn(model, x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss16, logs16 = loss_fn(model, x, y)
    # the clean cross-entropy term runs under autocast (the model's forward); the bound term
    # and the verified count are float32 and equal
    assert float(logs16["acc/verified"]) == float(logs32["acc/verified"])
    assert torch.isfinite(loss16) and abs(float(loss16.detach()) - float(loss32.detach())) < 0.05
    loss16.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
