"""advtrain.randomness: per-example draws that do not depend on the batch, and generator draws
identical to torch's; the attacks' results per example are the same for any batch size."""

from __future__ import annotations

import pytest
import torch

from advtrain.attacks import PGD, AutoAttack
from advtrain.data import DigitsDataModule
from advtrain.evaluation import evaluate_attacks
from advtrain.models import SmallCNN
from advtrain.randomness import Draws, _hash_int, hash32


def test_generator_mode_is_exactly_torchs_stream() -> None:
    draws = Draws(torch.device("cpu"), torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(3)
    assert torch.equal(draws.rand((4, 5), torch.float32), torch.rand((4, 5), generator=gen))
    assert torch.equal(
        draws.randn((3,), torch.float64), torch.randn(3, generator=gen, dtype=torch.float64)
    )
    assert torch.equal(draws.randint(0, 7, (6,)), torch.randint(0, 7, (6,), generator=gen))
    assert not draws.keyed and draws.narrow(torch.tensor([0])) is draws


def test_an_examples_draws_do_not_depend_on_its_batch() -> None:
    device = torch.device("cpu")
    batch = Draws.per_example(7, torch.arange(10), device)
    alone = Draws.per_example(7, torch.tensor([5]), device)
    for method in ("rand", "randn"):
        big = getattr(batch, method)((10, 3, 4), torch.float32, (2, 9))
        one = getattr(alone, method)((1, 3, 4), torch.float32, (2, 9))
        assert torch.equal(big[5], one[0])
    assert torch.equal(
        batch.randint(0, 50, (10, 2), (1,))[5], alone.randint(0, 50, (1, 2), (1,))[0]
    )
    assert torch.equal(batch.coin((10, 8), (4,))[5], alone.coin((1, 8), (4,))[0])
    sub = batch.narrow(torch.tensor([5, 2]))
    assert torch.equal(
        sub.rand((2, 6), torch.float32, (0,))[0], alone.rand((1, 6), torch.float32, (0,))[0]
    )
    # other keys, ids and seeds give other numbers
    u = batch.rand((10, 64), torch.float64, (0,))
    assert not torch.equal(u, batch.rand((10, 64), torch.float64, (1,)))
    assert not torch.equal(u[0], u[1])
    assert not torch.equal(
        u, Draws.per_example(8, torch.arange(10), device).rand((10, 64), torch.float64, (0,))
    )


def test_per_example_numbers_are_well_distributed() -> None:
    draws = Draws.per_example(0, torch.arange(200), torch.device("cpu"))
    u = draws.rand((200, 500), torch.float64, (1,))
    assert float(u.min()) >= 0.0 and float(u.max()) < 1.0
    assert abs(float(u.mean()) - 0.5) < 0.005 and abs(float(u.var()) - 1 / 12) < 0.002
    hist = torch.histc(u, bins=10, min=0, max=1) / u.numel()
    assert float((hist - 0.1).abs().max()) < 0.005
    z = draws.randn((200, 500), torch.float64, (2,))
    assert abs(float(z.mean())) < 0.01 and abs(float(z.std()) - 1) < 0.01
    k = draws.randint(3, 9, (200, 500), (3,))
    assert set(k.unique().tolist()) == {3, 4, 5, 6, 7, 8}
    # the key hash (Python ints) is the tensor hash, value for value
    values = [0, 1, 12345, 0xFFFFFFFF, 0x9E3779B9]
    assert [_hash_int(v) for v in values] == hash32(torch.tensor(values)).tolist()
    # the hash mixes: neighbouring inputs give unrelated outputs
    h = hash32(torch.arange(1 << 16, dtype=torch.int64))
    assert h.unique().numel() == 1 << 16 and float((h & 1).float().mean()) == pytest.approx(
        0.5, abs=0.01
    )


def test_attack_results_are_the_same_for_every_batch_size() -> None:
    torch.manual_seed(0)
    dm = DigitsDataModule()
    dm.setup("fit")
    x_train, y_train = dm.train_set.tensors  # type: ignore[union-attr]
    model = SmallCNN(width=4, hidden=16)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for i in range(0, len(x_train), 32):  # one epoch of natural training
        loss = torch.nn.functional.cross_entropy(model(x_train[i : i + 32]), y_train[i : i + 32])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    x, y = dm.test_tensors(16)
    attacks = {
        "pgd": PGD(eps=0.1, steps=3, restarts=3, seed=1),
        "aa": AutoAttack(
            eps=0.1, version="custom", seed=1, attacks=["apgd-ce", "apgd-t", "fab-t", "square"]
        ),
    }
    for member in attacks["aa"].attacks:  # small budgets: this is about the random streams
        for name, value in (("steps", 3), ("n_queries", 30), ("n_target_classes", 2)):
            if hasattr(member, name):
                setattr(member, name, value)
    masks = {
        bs: evaluate_attacks(model, (x, y), attacks, progress=False, batch_size=bs)
        for bs in (1, 5, 16)
    }
    for name in attacks:
        reference = masks[16].robust_correct[name]
        assert 0 < int(reference.sum()) < 16, "the test needs robust and fooled examples"
        for bs in (1, 5):
            assert torch.equal(masks[bs].robust_correct[name], reference), (name, bs)
