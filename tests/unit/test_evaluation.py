"""evaluate_attacks: clean / per-attack / worst-case accuracy over a dataset, model untouched."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from advtrain.attacks import APGD, FGSM, PGD, AutoAttack, AutoAttackResult
from advtrain.evaluation import EvaluationResult, evaluate_attacks
from advtrain.models import SmallCNN


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@pytest.fixture(scope="module")
def digits_model() -> tuple[nn.Module, Tensor, Tensor]:
    """A SmallCNN trained (clean, 15 epochs) on the first 1500 digits; returns the other 297."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        data = load_digits()
        x = torch.tensor(data.data, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
        y = torch.tensor(data.target, dtype=torch.long)
        model = SmallCNN(width=8, hidden=32)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        for _ in range(15):
            perm = torch.randperm(1500)
            for i in range(0, 1500, 64):
                idx = perm[i : i + 64]
                loss = F.cross_entropy(model(x[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        model.eval()
        model.zero_grad(set_to_none=True)
    finally:
        torch.set_num_threads(n)
    return model, x[1500:], y[1500:]


def attacks() -> dict[str, object]:
    return {
        "fgsm": FGSM(eps=0.1),
        "pgd": PGD(eps=0.1, steps=10, seed=0),
        "apgd": APGD(eps=0.1, steps=20, seed=0),
    }


def test_accuracies_and_masks(digits_model):
    model, x, y = digits_model
    res = evaluate_attacks(model, (x, y), attacks(), batch_size=100, progress=False)
    assert isinstance(res, EvaluationResult)
    assert res.n == 297 and torch.equal(res.labels, y)
    with torch.no_grad():
        clean = model(x).argmax(1) == y
    assert torch.equal(res.clean_correct, clean)
    assert res.clean_accuracy == pytest.approx(clean.float().mean().item())
    assert res.clean_accuracy > 0.9
    # FGSM is deterministic, so its mask is exactly FGSM's result on the clean-correct examples.
    idx = clean.nonzero().squeeze(1)
    x_adv = FGSM(eps=0.1)(model, x[idx], y[idx])
    want = torch.zeros_like(clean)
    with torch.no_grad():
        want[idx] = model(x_adv).argmax(1) == y[idx]
    assert torch.equal(res.robust_correct["fgsm"], want)
    for mask in res.robust_correct.values():
        assert not (mask & ~clean).any()
    worst = clean.clone()
    for mask in res.robust_correct.values():
        worst &= mask
    assert torch.equal(res.worst_case, worst)
    acc = res.robust_accuracy
    assert res.worst_case_accuracy <= min(acc.values())
    assert acc["apgd"] <= acc["fgsm"] < res.clean_accuracy
    assert res.counts["n"] == 297 and res.counts["worst_case"] == int(worst.sum())
    summary = res.to_dict()
    assert summary["robust_accuracy"] == acc and set(summary["seconds"]) == {"clean", *acc}


def test_loader_and_tensors_agree(digits_model):
    model, x, y = digits_model
    atk = {"fgsm": FGSM(eps=0.1)}
    a = evaluate_attacks(model, (x, y), atk, batch_size=64, progress=False)
    loader = DataLoader(TensorDataset(x, y), batch_size=50)
    b = evaluate_attacks(model, loader, atk, progress=False)
    dicts = [{"x": x[i : i + 80], "y": y[i : i + 80]} for i in range(0, 297, 80)]
    c = evaluate_attacks(model, dicts, atk, progress=False)
    for other in (b, c):
        assert torch.equal(a.clean_correct, other.clean_correct)
        assert torch.equal(a.robust_correct["fgsm"], other.robust_correct["fgsm"])


def test_n_examples_and_per_class(digits_model):
    model, x, y = digits_model
    loader = DataLoader(TensorDataset(x, y), batch_size=32)
    res = evaluate_attacks(model, loader, {"fgsm": FGSM(eps=0.1)}, n_examples=70, progress=False)
    assert res.n == 70 and torch.equal(res.labels, y[:70])
    per_class = res.per_class_accuracy(num_classes=12)
    assert set(per_class) == {"clean", "fgsm", "worst_case"}
    for name, mask in (("clean", res.clean_correct), ("fgsm", res.robust_correct["fgsm"])):
        for c in range(10):
            sel = res.labels == c
            if sel.any():
                assert per_class[name][c].item() == pytest.approx(mask[sel].float().mean().item())
        assert torch.isnan(per_class[name][10:]).all()


def test_eps_zero_and_no_attacks_give_clean_accuracy(digits_model):
    model, x, y = digits_model
    res = evaluate_attacks(
        model,
        (x, y),
        {"pgd0": PGD(eps=0.0, steps=3), "aa0": AutoAttack(eps=0.0, version="fast")},
        progress=False,
    )
    assert res.robust_accuracy == {"pgd0": res.clean_accuracy, "aa0": res.clean_accuracy}
    assert res.worst_case_accuracy == res.clean_accuracy
    none = evaluate_attacks(model, (x, y), {}, progress=False)
    assert torch.equal(none.worst_case, none.clean_correct)


def test_autoattack_details_cover_all_examples(digits_model):
    model, x, y = digits_model
    aa = AutoAttack(eps=0.1, version="custom", attacks=[APGD(eps=0.1, steps=10, seed=0)], seed=0)
    res = evaluate_attacks(model, (x[:150], y[:150]), {"aa": aa}, batch_size=60, progress=False)
    detail = res.details["aa"]
    assert isinstance(detail, AutoAttackResult) and detail.n == 150
    assert torch.equal(detail.clean_correct, res.clean_correct)
    assert torch.equal(detail.robust, res.robust_correct["aa"])
    assert "details" in res.to_dict()


def test_model_state_untouched():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Flatten(),
        nn.Linear(256, 10),
    )
    model.train()
    model[0].weight.grad = torch.ones_like(model[0].weight)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(40, 1, 8, 8)
    y = torch.arange(40) % 10
    x0 = x.clone()
    evaluate_attacks(
        model,
        (x, y),
        {"pgd": PGD(eps=0.1, steps=2, bn_mode="train"), "apgd": APGD(eps=0.1, steps=3)},
        progress=False,
    )
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert model.training and all(m.training for m in model.modules())
    assert torch.equal(model[0].weight.grad, torch.ones_like(model[0].weight))
    assert torch.equal(x, x0)


def test_progress_with_and_without_tqdm(digits_model, monkeypatch, capsys):
    model, x, y = digits_model
    evaluate_attacks(model, (x[:40], y[:40]), {"fgsm": FGSM(eps=0.1)}, batch_size=20)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # import fails -> plain lines
    evaluate_attacks(model, (x[:40], y[:40]), {"fgsm": FGSM(eps=0.1)}, batch_size=20)
    assert "[evaluate_attacks] batch 2/2" in capsys.readouterr().err


def test_bad_arguments(digits_model):
    model, x, y = digits_model
    atk = {"fgsm": FGSM(eps=0.1)}
    with pytest.raises(TypeError, match=r"torch\.nn\.Module"):
        evaluate_attacks(lambda t: t, (x, y), atk)
    with pytest.raises(TypeError, match="mapping"):
        evaluate_attacks(model, (x, y), [FGSM(eps=0.1)])
    with pytest.raises(TypeError, match="callable"):
        evaluate_attacks(model, (x, y), {"bad": 3})
    with pytest.raises(ValueError, match="n_examples"):
        evaluate_attacks(model, (x, y), atk, n_examples=0)
    with pytest.raises(ValueError, match="same number of examples"):
        evaluate_attacks(model, (x, y[:5]), atk)
    with pytest.raises(ValueError, match="differs from the model's device"):
        evaluate_attacks(model, (x, y), atk, device="meta")
    with pytest.raises(TypeError, match="integer class indices"):
        evaluate_attacks(model, (x, y.float()), atk, progress=False)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\)"):
        evaluate_attacks(model, (x, y + 10), atk, progress=False)
    with pytest.raises(ValueError, match="NaN"):
        evaluate_attacks(model, (x * float("nan"), y), atk, progress=False)
    with pytest.raises(ValueError, match="empty"):
        evaluate_attacks(model, [], atk, progress=False)
    with pytest.raises(TypeError, match="DataLoader"):
        evaluate_attacks(model, x, atk, progress=False)
