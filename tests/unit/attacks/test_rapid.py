"""AutoAttack ``version="rapid"`` and MALT target ranking.

The rapid protocol must give AutoAttack standard's verdict (at most 0.3 points weaker, here on the
Madry digits model and a standard model) and must escalate where its gradient-masking check
(Square on the examples the white-box members came closest to fooling) finds what they missed.
"""

from __future__ import annotations

import pytest
import torch
from _square_fab_models import digits, quantized_cnn, standard_cnn
from torch import nn

from advtrain.attacks import APGD, AutoAttack
from advtrain.attacks.autoattack import RAPID_NAMES
from advtrain.attacks.malt import malt_targets

EPS = 0.2


def test_malt_ranks_targets_by_the_exact_distance_of_a_linear_model() -> None:
    """For a linear model the first-order distance is exact: (z_y - z_j) / ||w_y - w_j||_1."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 6)).eval()
    x, y = torch.rand(20, 3, 4), torch.randint(0, 6, (20,))
    w = model[1].weight.detach()
    with torch.no_grad():
        z = model(x)
    dist = (z.gather(1, y[:, None]) - z) / (w[y][:, None, :] - w[None]).abs().sum(-1)
    dist.scatter_(1, y[:, None], float("inf"))
    expected = dist.argsort(dim=1)[:, :3]
    assert torch.equal(malt_targets(model, x, y, 3, "linf"), expected)
    # L2: the dual norm is L2, a different ranking in general
    dist2 = (z.gather(1, y[:, None]) - z) / (w[y][:, None, :] - w[None]).norm(dim=-1)
    dist2.scatter_(1, y[:, None], float("inf"))
    assert torch.equal(malt_targets(model, x, y, 3, "l2"), dist2.argsort(dim=1)[:, :3])


def test_target_ranking_is_checked() -> None:
    with pytest.raises(ValueError, match="target_ranking"):
        APGD(targeted=True, target_ranking="random")


@pytest.fixture(scope="module")
def results(madry_digits: tuple[nn.Module, torch.Tensor, torch.Tensor]) -> dict[str, object]:
    model, x, y = madry_digits
    x, y = x[:160], y[:160]
    out = {}
    for version in ("standard", "rapid"):
        attack = AutoAttack(eps=EPS, version=version, seed=0, n_queries=1000)
        x_adv = attack(model, x, y)
        out[version] = attack.last_result
        out[f"{version}_adv"] = x_adv
    out["xy"] = (x, y)
    return out


def test_rapid_matches_standard_on_the_madry_model(results: dict[str, object]) -> None:
    standard, rapid = results["standard"], results["rapid"]
    assert rapid.attacks == RAPID_NAMES and rapid.protocol == "rapid"
    n = rapid.n
    # never a weaker verdict beyond 0.3 points (here: not a single example more)
    assert rapid.robust_accuracy <= standard.robust_accuracy + 0.003
    assert int(rapid.robust.sum()) <= int(standard.robust.sum()) + int(0.003 * n)
    # four MALT targets do what nine logit-ranked ones do, up to a couple of examples
    after_t = rapid.counts["apgd-t-malt"]
    assert after_t <= standard.counts["apgd-t"] + 2
    x, _ = results["xy"]
    assert (results["rapid_adv"] - x).abs().amax() <= EPS + 1e-6


def test_the_masked_model_escalates_to_square_on_every_example() -> None:
    """Quantised inputs give white-box attacks a zero gradient: the Square check fools examples
    they missed, so the rapid protocol runs Square with all its queries on everything still
    robust, and its number is no weaker than AutoAttack standard's."""
    _, _, x, y = digits()
    x, y = x[:96], y[:96]
    masked = quantized_cnn()
    rapid = AutoAttack(eps=0.3, version="rapid", seed=0, n_queries=500)
    rapid(masked, x, y)
    result = rapid.last_result
    assert result.escalated
    assert result.counts["square"] < result.counts["square-check"], "the full Square found more"
    standard = AutoAttack(eps=0.3, version="standard", seed=0, n_queries=500)
    standard(masked, x, y)
    assert result.robust_accuracy <= standard.last_result.robust_accuracy + 0.003


def test_without_a_masking_sign_the_escalation_members_do_not_run() -> None:
    _, _, x, y = digits()
    rapid = AutoAttack(eps=0.05, version="rapid", seed=0, n_queries=200)
    rapid(standard_cnn(), x[:48], y[:48])
    result = rapid.last_result
    assert not result.escalated, "Square found nothing the white-box members missed"
    assert all(result.seconds[n] == 0.0 for n in RAPID_NAMES[3:])
    assert torch.equal(result.robust_after["square"], result.robust_after["square-check"])


def test_rapid_state_and_eps_reach_every_member() -> None:
    rapid = AutoAttack(eps=0.1, version="rapid", seed=3)
    rapid.eps = 0.2
    assert all(a.eps == 0.2 for _, a in rapid.members())
    assert set(rapid.state_dict()["attacks"]) == set(RAPID_NAMES)
    standard = rapid.escalated()
    assert standard.version == "standard" and standard.eps == 0.2 and standard.seed == 3


def test_the_check_set_is_the_closest_calls_by_dlr_margin() -> None:
    """The Square check attacks the still-robust examples with the smallest DLR margin (the
    scale-free margin of Croce & Hein's DLR loss), at least 16 of them."""
    from advtrain.attacks.ensemble_run import CHECK_MIN, EnsembleRun, closest_calls, dlr_margin

    logits = torch.tensor([[3.0, 1.0, 0.0], [3.0, 2.9, 0.0], [0.0, 5.0, 4.0]])
    y = torch.tensor([0, 0, 1])
    expected = torch.tensor([2 / 3, 0.1 / 3, 1 / 5])
    assert torch.allclose(dlr_margin(logits, y), expected)
    assert torch.allclose(dlr_margin(logits * 7.0, y), expected), "scale-free"

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5)).eval()
    x = torch.rand(200, 1, 3, 4)
    with torch.no_grad():
        z = model(x)
    y = z.argmax(1)
    run = EnsembleRun(model, x, y, torch.ones(200, dtype=torch.bool), 5, verbose=False)
    run.robust[:50] = False  # fooled already: never checked
    picked = closest_calls(run)
    assert picked.numel() == max(CHECK_MIN, 15) and bool((picked >= 50).all())
    margins = dlr_margin(z, y)
    others = torch.ones(200, dtype=torch.bool)
    others[:50] = False
    others[picked] = False
    assert float(margins[picked].max()) <= float(margins[others].min())
