"""The evaluation pipeline (advtrain.evaluation) without Hydra or Lightning: plan, units, report."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from advtrain.attacks import PGD, Square
from advtrain.evaluation import EvaluationPlan, MemoryStore, UnitRunner, run_evaluation
from advtrain.evaluation.plan import SmoothingPlan
from advtrain.evaluation.report import report_sections
from advtrain.evaluation.state import UnitStore
from advtrain.threat import ThreatModel

THREAT = ThreatModel("linf", 0.1, (0.0, 1.0))


def _model_and_data() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    x = torch.rand(40, 1, 3, 4)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:6] = (y[:6] + 1) % 3  # a few examples wrong on clean data
    return model, x, y


def _plan(**kwargs: object) -> EvaluationPlan:
    attacks = {
        "pgd": PGD(eps=0.1, steps=5, seed=1),
        "square": Square(eps=0.1, n_queries=30, seed=1),
    }
    settings = {
        "threat": THREAT,
        "attacks": attacks,
        "grid_factors": [0.0, 0.5, 1.0],
        "grid_attacks": ["pgd"],
        "bound_methods": ["ibp"],
        "batch_size": 16,
    }
    settings.update(kwargs)
    return EvaluationPlan(**settings)  # type: ignore[arg-type]


def test_counts_are_consistent_and_the_worst_case_is_the_intersection() -> None:
    model, x, y = _model_and_data()
    plan = _plan()
    out = run_evaluation(model, x, y, plan)
    sections = report_sections(out, plan)
    counts, robust = sections["counts"], sections["robust_accuracy"]
    assert counts["n"] == 40 and counts["clean"] == 34
    assert counts["worst_case"] <= min(counts["pgd"], counts["square"]) <= counts["clean"]
    assert robust["worst_case"] == counts["worst_case"] / 40
    grid = sections["eps_grid"]
    assert grid["eps"] == [0.0, 0.05, 0.1]
    assert grid["accuracy"]["pgd"][0] == sections["clean_accuracy"], "eps 0 is the clean pass"
    assert grid["accuracy"]["pgd"][2] == robust["pgd"], "factor 1 reuses the main result"
    # the curve is the worst case of the grid attacks at every eps, the threat model's included
    assert grid["accuracy"]["worst_case"] == grid["accuracy"]["pgd"]
    ibp = sections["certified"]["bounds"]["ibp"]
    assert ibp["supported"] and ibp["at_threat_eps"] <= robust["worst_case"]
    assert sum(sections["per_class"]["support"]) == 40
    codes = {f["code"] for f in sections["sanity"]["flags"]}
    assert {"randomized_model", "black_box_beats_white_box", "eps_zero_not_clean"} <= codes


def test_numbers_do_not_depend_on_the_batch_size_or_on_resuming(tmp_path: Path) -> None:
    model, x, y = _model_and_data()
    a = report_sections(run_evaluation(model, x, y, _plan(batch_size=16)), _plan())
    b = report_sections(run_evaluation(model, x, y, _plan(batch_size=7)), _plan())
    assert a["counts"] == b["counts"] and a["eps_grid"] == b["eps_grid"]
    # a store on disk: the second run reads every unit back and gets the same numbers
    plan = _plan()
    first = UnitStore(tmp_path / "state", "fp", plan.settings())
    c = report_sections(run_evaluation(model, x, y, plan, UnitRunner(first, plan.seed)), plan)
    again = UnitStore(tmp_path / "state", "fp", plan.settings())
    d = report_sections(run_evaluation(model, x, y, plan, UnitRunner(again, plan.seed)), plan)
    assert again.computed == 0 and again.reused == first.computed
    assert c["counts"] == d["counts"] == a["counts"]


def test_the_model_is_left_as_found() -> None:
    model, x, y = _model_and_data()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    run_evaluation(model, x, y, _plan())
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_smoothing_only_reports_no_worst_case() -> None:
    model, x, y = _model_and_data()
    plan = EvaluationPlan(
        threat=ThreatModel("l2", 0.25, (0.0, 1.0)),
        attacks={},
        smoothing=SmoothingPlan(sigma=0.25, n0=8, n=64, alpha=0.1, batch_size=64, n_examples=8),
    )
    sections = report_sections(run_evaluation(model, x, y, plan), plan)
    assert "worst_case" not in sections["robust_accuracy"]
    smoothing = sections["certified"]["smoothing"]
    assert smoothing["n_examples"] == 8
    assert smoothing["counts"][0] == round(smoothing["accuracy"][0] * 8)
    assert sections["certified"]["gap"]["empirical"] is None


def test_a_memory_store_counts_units() -> None:
    model, x, y = _model_and_data()
    store = MemoryStore()
    run_evaluation(model, x, y, _plan(), UnitRunner(store, 0))
    # clean, pgd and square at eps, pgd at two other grid eps, ibp at eps: 6 phases x 3 batches
    assert store.computed == 18


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"grid_factors": [-1.0]}, "eps_grid.factors"),
        ({"grid_attacks": ["apgd"]}, "unknown attacks"),
        ({"bound_methods": ["deeppoly"]}, "certify.bounds.methods"),
        ({"batch_size": 0}, "batch_size"),
        ({"attacks": {"pgd": PGD(eps=0.3)}}, "threat.eps"),
        ({"attacks": {"pgd": PGD(eps=0.1, norm="l2")}}, "threat.norm"),
        ({"attacks": {"pgd": "not an attack"}}, "callable"),
    ],
)
def test_bad_plans_name_what_to_change(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        _plan(**kwargs)


class _Quantize(nn.Module):
    """Rounds the inputs: a zero input gradient everywhere (a gradient mask)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x * 4) / 4


def test_a_rapid_autoattack_escalates_when_the_model_checks_doubt_gradients() -> None:
    from advtrain.attacks import AutoAttack

    model, x, y = _model_and_data()
    masked = nn.Sequential(_Quantize(), model).eval()
    with torch.no_grad():
        y = masked(x).argmax(1)
    rapid = AutoAttack(eps=0.1, version="rapid", seed=0, n_queries=50)
    plan = EvaluationPlan(threat=THREAT, attacks={"aa": rapid}, batch_size=16)
    out = run_evaluation(masked, x, y, plan)
    sections = report_sections(out, plan)
    assert "zero_gradients" in sections["sanity"]["triggered"]
    protocol = sections["attacks"]["aa"]["protocol"]
    assert protocol["version"] == "rapid" and protocol["escalated"]
    assert "zero_gradients" in protocol["reason"]
    # the standard ensemble ran (its members are the report's), not the rapid one
    names = [m["name"] for m in sections["attacks"]["aa"]["members"]]
    assert names == ["apgd-ce", "apgd-t", "fab-t", "square"]


def test_a_rapid_check_that_fires_in_one_batch_escalates_every_batch() -> None:
    """Without the model checks (sanity off) the masked model reaches the Square check, which
    fools what the white-box members could not: the report says the protocol escalated and why,
    and Square ran with all its queries on every batch (the units' escalation flag reaches the
    pipeline)."""
    from advtrain.attacks import AutoAttack
    from advtrain.evaluation.plan import SanityPlan

    torch.manual_seed(0)
    linear = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    x = torch.rand(48, 1, 3, 4)
    with torch.no_grad():  # steep, balanced classes (Square fools some at eps 0.1)
        linear[1].weight.normal_(0, 3.0)
        linear[1].bias.copy_(-linear(x).mean(0))
    masked = nn.Sequential(_Quantize(), linear).eval()
    with torch.no_grad():
        y = masked(x).argmax(1)
    rapid = AutoAttack(eps=0.1, version="rapid", seed=0, n_queries=500)
    plan = EvaluationPlan(
        threat=THREAT,
        attacks={"aa": rapid},
        batch_size=16,
        sanity=SanityPlan(enabled=False),
    )
    out = run_evaluation(masked, x, y, plan)
    sections = report_sections(out, plan)
    protocol = sections["attacks"]["aa"]["protocol"]
    assert protocol["escalated"], protocol
    assert "Square check" in protocol["reason"]
    assert protocol["escalation_coverage"] == 1.0, "masked: the rings reach every example"
    members = {m["name"]: m["correct_after"] for m in sections["attacks"]["aa"]["members"]}
    assert members["square"] <= members["square-check"] < members["apgd-t-malt"]


def test_a_rapid_autoattack_on_a_sound_model_reports_its_protocol() -> None:
    from advtrain.attacks import AutoAttack
    from advtrain.attacks.autoattack import RAPID_NAMES

    model, x, y = _model_and_data()
    plan = EvaluationPlan(
        threat=THREAT,
        attacks={"aa": AutoAttack(eps=0.1, version="rapid", seed=0, n_queries=50)},
        batch_size=16,
    )
    sections = report_sections(run_evaluation(model, x, y, plan), plan)
    protocol = sections["attacks"]["aa"]["protocol"]
    assert protocol["version"] == "rapid"
    assert protocol["escalated"] == (protocol["reason"] is not None)
    assert [m["name"] for m in sections["attacks"]["aa"]["members"]] == list(RAPID_NAMES)


def test_a_min_norm_curve_is_capped_by_the_main_attacks_and_counts_at_threat_eps() -> None:
    """The FMN curve: one run gives every grid eps; at and beyond threat.eps it never claims more
    than the main attacks measured; FMN itself is one more attack at threat.eps."""
    from advtrain.attacks import FMN

    model, x, y = _model_and_data()
    plan = _plan(
        grid_factors=[0.0, 0.5, 1.0, 2.0],
        grid_attacks=[],
        bound_methods=[],
        min_norm=FMN(eps=0.1, steps=30),
        min_norm_spec={"_target_": "advtrain.attacks.FMN", "steps": 30},
    )
    out = run_evaluation(model, x, y, plan)
    sections = report_sections(out, plan)
    curve = [p["accuracy"] for p in sections["eps_curve"]]
    robust = sections["robust_accuracy"]
    assert curve[0] == sections["clean_accuracy"]
    assert curve == sorted(curve, reverse=True), "a threshold on per-example norms is monotone"
    assert curve[2] <= robust["worst_case"] and curve[3] <= curve[2]
    assert "fmn" in robust and robust["worst_case"] <= robust["fmn"]
    assert sections["attacks"]["fmn"]["target"] == "advtrain.attacks.FMN"
    grid = sections["eps_grid"]
    assert grid["min_norm"]["attack"] == "fmn"
    assert set(grid["min_norm"]["capped_by"]) == {"pgd", "square"}
    assert "minimum-norm fmn" in sections["eps_curve_attack"]
    flags = {f["code"]: f for f in sections["sanity"]["flags"]}
    assert "weak_min_norm_curve" in flags


def test_a_min_norm_attack_weaker_than_the_main_attacks_is_flagged() -> None:
    """FMN with one step finds little; PGD finds more at threat.eps: the curve beyond threat.eps
    may be too high, and the report says so."""
    from advtrain.attacks import FMN

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3)).eval()
    x = torch.rand(64, 1, 3, 4)
    with torch.no_grad():  # steep, balanced classes: PGD at eps 0.05 fools about half
        model[1].weight.normal_(0, 3.0)
        model[1].bias.copy_(-model(x).mean(0))
        y = model(x).argmax(1)
    threat = ThreatModel("linf", 0.05, (0.0, 1.0))
    plan = EvaluationPlan(
        threat=threat,
        attacks={"pgd": PGD(eps=0.05, steps=20, seed=1)},
        grid_factors=[0.5, 1.0, 1.5],
        grid_attacks=[],
        min_norm=FMN(eps=0.05, steps=1, alpha_init=1e-4),
        batch_size=32,
    )
    out = run_evaluation(model, x, y, plan)
    flags = {f["code"]: f for f in report_sections(out, plan)["sanity"]["flags"]}
    flag = flags["weak_min_norm_curve"]
    assert flag["triggered"], flag
    assert flag["details"]["min_norm_accuracy"] > flag["details"]["main_accuracy"] + 0.03


def test_a_min_norm_attack_must_have_min_norm_and_the_threat_norm() -> None:
    from advtrain.attacks import FMN

    with pytest.raises(TypeError, match="min_norm"):
        _plan(min_norm=PGD(eps=0.1))
    with pytest.raises(ValueError, match=r"threat\.norm"):
        _plan(min_norm=FMN(eps=0.1, norm="l2"))
