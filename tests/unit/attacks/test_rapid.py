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

from advtrain.attacks import APGD, Attack, AutoAttack
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
    assert result.escalated and result.escalation_coverage == 1.0, "masked: every ring ran"
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
    assert result.escalation_coverage == 0.0
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


class _Oracle(Attack):
    """An attack that fools exactly the examples whose id (pixel 3, times 1000) it is told to,
    by raising the runner-up's pixel by eps, and records the ids of every call: a ground truth
    for the escalation's ring logic."""

    def __init__(self, fools: set[int]) -> None:
        super().__init__(eps=0.1)
        self.fools, self.calls = fools, []

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        ids = (x[:, 0, 0, 3] * 1000).round().long().tolist()
        self.calls.append(set(ids))
        out = x.clone()
        rows = [i for i, k in enumerate(ids) if k in self.fools]
        out[rows, 0, 0, 1] += self.eps
        return out


def _ranked_linear_problem(n: int = 100) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """Class 0 beats class 1 by a margin growing with the example's id (so the DLR ranking is
    the id order); pixel 3 carries the id, which the model ignores."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3, bias=False)).eval()
    with torch.no_grad():
        model[1].weight.copy_(10 * torch.eye(3, 4))
    ids = torch.arange(n, dtype=torch.float32)
    x = torch.zeros(n, 1, 1, 4)
    x[:, 0, 0, 0], x[:, 0, 0, 1], x[:, 0, 0, 3] = 0.5, 0.49 - 0.0008 * ids, ids / 1000
    return model, x, torch.zeros(n, dtype=torch.long)


@pytest.mark.parametrize(
    ("fools", "forced", "coverage", "rings"),
    [
        ({50}, False, 0.0, 0),  # the check (ids 0-15) finds nothing: no escalation
        ({3}, False, 0.25, 1),  # found inside the check set: one ring, nothing beyond it
        ({3, 20}, False, 0.5, 2),  # ring 1 found id 20 beyond the check set: ring 2
        ({3, 20, 40, 90}, False, 1.0, 3),  # each ring finds one further out: to the end
        (set(), True, 0.25, 1),  # forced (another batch escalated): the first ring at least
    ],
)
def test_the_escalation_widens_in_rings_only_while_it_finds_examples_further_out(
    fools: set[int], forced: bool, coverage: float, rings: int
) -> None:
    model, x, y = _ranked_linear_problem()
    rapid = AutoAttack(eps=0.1, version="rapid", seed=0)
    rapid.attacks = [_Oracle(set()), _Oracle(set())]  # white-box members that find nothing
    rapid.check, rapid.escalation = _Oracle(fools), [_Oracle(fools)]
    rapid.always_escalate = forced
    rapid(model, x, y)
    result = rapid.last_result
    assert rapid.check.calls == [set(range(16))], "the check attacks the 16 closest calls"
    assert result.escalated == (rings > 0) and result.escalation_coverage == coverage
    calls = rapid.escalation[0].calls
    assert len(calls) == rings
    bounds = [0, 25, 50, 100]
    for k, call in enumerate(calls):  # each ring: its part of the ranking, still robust
        assert call == set(range(bounds[k], bounds[k + 1])) - (fools & set(range(16)))
    found = {i for i in fools if i < 16} | {i for i in fools if i < bounds[rings]}
    assert set((~result.robust).nonzero().squeeze(1).tolist()) == found
