"""APGD's per-iteration bookkeeping: the CPU (row indices) and accelerator (mask) paths agree.

On the CPU, APGD copies the rows that improved with ``index_copy_``; on accelerators it uses a
branch-free ``torch.where`` with the mask (no host sync per iteration). Only the CPU path runs in
CI, so these tests force the mask path on the CPU and require bit-identical results.
"""

from __future__ import annotations

import pytest
import torch

import advtrain.attacks.apgd as apgd_module
from advtrain.attacks import APGD
from advtrain.attacks.apgd import _copy_rows_, _rows


def test_copy_rows_index_and_mask_paths_agree():
    gen = torch.Generator().manual_seed(0)
    dst = torch.rand(6, 2, 3, generator=gen)
    src = torch.rand(6, 2, 3, generator=gen)
    mask = torch.tensor([True, False, False, True, True, False])
    by_index = _copy_rows_(dst.clone(), _rows(mask), src)
    by_mask = _copy_rows_(dst.clone(), mask, src)
    expected = torch.where(mask.view(-1, 1, 1), src, dst)
    assert torch.equal(by_index, expected)
    assert torch.equal(by_mask, expected)
    none = _copy_rows_(dst.clone(), _rows(torch.zeros(6, dtype=torch.bool)), src)
    assert torch.equal(none, dst)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"norm": "linf", "eps": 0.2},
        {"norm": "l2", "eps": 1.0, "loss": "dlr"},
        {"norm": "l1", "eps": 1.5},
        {"norm": "linf", "eps": 0.2, "targeted": True, "n_target_classes": 2},
    ],
    ids=["linf-ce", "l2-dlr", "l1-ce", "linf-t"],
)
def test_mask_path_gives_the_same_result(madry_digits, monkeypatch, kwargs):
    model, x, y = madry_digits
    x, y = x[:64], y[:64]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny 8x8 model: fastest on one thread
    try:
        by_index = APGD(steps=20, seed=0, **kwargs)(model, x, y)
        monkeypatch.setattr(apgd_module, "_rows", lambda mask: mask)
        by_mask = APGD(steps=20, seed=0, **kwargs)(model, x, y)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(by_index, by_mask)
    with torch.no_grad():
        fooled = (model(by_index).argmax(1) != y).sum().item()
    assert 0 < fooled < 64  # the run exercised both kinds of examples
