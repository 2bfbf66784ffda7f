"""Schedules: shapes, endpoints, continuity, validation and state_dict round trips."""

from __future__ import annotations

import itertools
import json
import math

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from advtrain.schedules import (
    Constant,
    Cosine,
    Linear,
    Piecewise,
    Progress,
    Schedule,
    Smoothed,
    Step,
    build_schedule,
)

values = st.floats(-10.0, 10.0, allow_nan=False)
lengths = st.floats(0.01, 100.0, allow_nan=False)
fractions = st.floats(0.0, 1.0, allow_nan=False)
mids = st.floats(0.0, 1.0, allow_nan=False)
betas = st.floats(2.0, 8.0, allow_nan=False)
SETTINGS = settings(max_examples=60, deadline=None)


@st.composite
def ramps(draw: st.DrawFn) -> Schedule:
    """A Linear, Smoothed or Cosine ramp with random parameters in the epoch unit."""
    kind = draw(st.sampled_from(["linear", "smoothed", "cosine"]))
    start, end = draw(values), draw(values)
    ramp, warmup = draw(lengths), draw(st.floats(0.0, 50.0))
    if kind == "linear":
        return Linear(start, end, ramp=ramp, warmup=warmup, unit="epoch")
    if kind == "cosine":
        return Cosine(start, end, ramp=ramp, warmup=warmup, unit="epoch")
    return Smoothed(
        start, end, ramp=ramp, warmup=warmup, mid=draw(mids), beta=draw(betas), unit="epoch"
    )


def max_unit_slope(s: Schedule) -> float:
    """An upper bound of |d value / d u| on the unit ramp divided by |end - start|."""
    if isinstance(s, Smoothed):
        return s.beta
    if isinstance(s, Cosine):
        return math.pi / 2
    return 1.0


# -- ramps: endpoints, monotonicity, continuity -----------------------------------------------


@SETTINGS
@given(ramps(), st.floats(0.0, 1.0))
def test_ramp_endpoints_exact_and_flat_outside(s: Schedule, before: float) -> None:
    w, r = s.warmup, s.ramp
    assert s(w) == s.start
    assert s(w * before) == s.start
    assert s(w + r) == s.end
    assert s(w + r + 1.0) == s.end
    assert s(w + r + 1e6) == s.end


@SETTINGS
@given(ramps(), st.lists(st.floats(-5.0, 200.0), min_size=2, max_size=40))
def test_ramp_monotone_and_between_start_and_end(s: Schedule, ts: list[float]) -> None:
    lo, hi = min(s.start, s.end), max(s.start, s.end)
    vals = [s(t) for t in sorted(ts)]
    tol = 1e-9 * (1 + abs(hi) + abs(lo))
    for v in vals:
        assert lo - tol <= v <= hi + tol
    sign = 1.0 if s.end >= s.start else -1.0
    for a, b in itertools.pairwise(vals):
        assert sign * (b - a) >= -tol


@SETTINGS
@given(ramps(), fractions, st.floats(1e-6, 1e-3))
def test_ramp_lipschitz_continuous(s: Schedule, u: float, h: float) -> None:
    """|f(t+dt) - f(t)| <= slope bound · dt: no jumps anywhere, breakpoints included."""
    t = s.warmup + u * s.ramp
    dt = h * s.ramp
    bound = max_unit_slope(s) * abs(s.end - s.start) * h
    assert abs(s(t + dt) - s(t)) <= bound * (1 + 1e-6) + 1e-9
    assert abs(s(t) - s(t - dt)) <= bound * (1 + 1e-6) + 1e-9


@SETTINGS
@given(values, values, lengths, st.floats(0.05, 0.95), betas)
def test_smoothed_slope_continuous_at_mid(
    start: float, end: float, ramp: float, mid: float, beta: float
) -> None:
    """The polynomial and the linear piece meet with the same derivative (auto_LiRPA's design)."""
    assume(abs(end - start) > 1e-3)
    s = Smoothed(start, end, ramp=ramp, warmup=1.0, mid=mid, beta=beta, unit="step")
    t_mid = 1.0 + mid * ramp
    h = 1e-6 * ramp
    left = (s(t_mid) - s(t_mid - h)) / h
    right = (s(t_mid + h) - s(t_mid)) / h
    linear_slope = (end - s(t_mid)) / ((1 - mid) * ramp)
    assert right == pytest.approx(linear_slope, rel=1e-3)
    assert left == pytest.approx(right, rel=1e-3)


def test_smoothed_matches_auto_lirpa_shape() -> None:
    """Hand values: eps 0→0.4 over epochs [2, 12], mid 0.25, beta 4.

    On the unit ramp the polynomial is a·u^4 with a = 1 / (m^3·(4(1-m) + m)) = 1 / (0.015625·3.25)
    = 19.6923...; at u = 0.125 (epoch 3.25) the value is 0.4·a·0.125^4, at u = 0.25 (epoch 4.5)
    0.4·a·0.25^4 = 0.4/13, and from there it is linear to 0.4 at epoch 12.
    """
    s = Smoothed(0.0, 0.4, ramp_epochs=10, warmup_epochs=2)
    a = 1.0 / (0.25**3 * (4 * 0.75 + 0.25))
    assert s(3.25) == pytest.approx(0.4 * a * 0.125**4, rel=1e-12)
    assert s(4.5) == pytest.approx(0.4 / 13, rel=1e-12)
    assert s(8.25) == pytest.approx(0.4 / 13 + (0.4 - 0.4 / 13) * 0.5, rel=1e-12)
    assert s(2.0) == 0.0 and s(12.0) == 0.4
    # The slow start: at a quarter of the ramp only 1/13 of the way, while Linear is at 1/4.
    assert s(4.5) < Linear(0.0, 0.4, ramp_epochs=10, warmup_epochs=2)(4.5) / 3


def test_smoothed_extreme_mid_points() -> None:
    lin = Smoothed(0.0, 1.0, ramp=10, mid=0.0, unit="step")
    assert lin(2.5) == pytest.approx(0.25)
    power = Smoothed(0.0, 1.0, ramp=10, mid=1.0, beta=2.0, unit="step")
    assert power(5.0) == pytest.approx(0.25)
    assert power(10.0) == 1.0


def test_cosine_hand_values() -> None:
    s = Cosine(1.0, 3.0, ramp=4.0, warmup=2.0, unit="epoch")
    assert s(3.0) == pytest.approx(1.0 + 2.0 * (1 - math.cos(math.pi / 4)) / 2)
    assert s(4.0) == pytest.approx(2.0)
    assert s(6.0) == 3.0


def test_decreasing_ramps() -> None:
    for cls in (Linear, Smoothed, Cosine):
        s = cls(1.0, 0.0, ramp=1.0)
        assert s(0.0) == 1.0 and s(1.0) == 0.0
        assert 0.0 < s(0.5) < 1.0


def test_zero_ramp_jumps_after_warmup() -> None:
    for cls in (Linear, Smoothed, Cosine):
        s = cls(0.0, 2.0, ramp=0.0, warmup=3.0, unit="step")
        assert s(3.0) == 0.0
        assert s(3.000001) == 2.0


def test_units_and_progress() -> None:
    p = Progress(step=500, epoch=2.5, fraction=0.25)
    assert Cosine(0.0, 1.0, ramp=0.5)(p) == pytest.approx(0.5)
    assert Cosine(0.0, 1.0, ramp_epochs=5.0)(p) == pytest.approx(0.5)
    assert Cosine(0.0, 1.0, ramp_steps=1000)(p) == pytest.approx(0.5)
    assert Smoothed(0.0, 1.0, ramp_steps=1000).unit == "step"
    assert Step([1.0, 2.0], [400], unit="step")(p) == 2.0
    assert Piecewise([(0, 0.0), (5, 1.0)], unit="epoch")(p) == pytest.approx(0.5)
    s = Piecewise([(0, 0.0), (1, 1.0)])
    s(Progress(fraction=0.3))
    assert s.last_value == pytest.approx(0.3)


# -- Step and Piecewise ------------------------------------------------------------------------


@SETTINGS
@given(
    st.lists(st.floats(-100, 100), min_size=1, max_size=8, unique=True),
    st.data(),
)
def test_step_picks_value_of_last_boundary_passed(bounds: list[float], data: st.DataObject) -> None:
    bounds = sorted(bounds)
    vals = data.draw(st.lists(values, min_size=len(bounds) + 1, max_size=len(bounds) + 1))
    s = Step(vals, bounds, unit="step")
    t = data.draw(st.floats(-200, 200))
    passed = sum(1 for b in bounds if b <= t)
    assert s(t) == vals[passed]
    for i, b in enumerate(bounds):
        assert s(b) == vals[i + 1]  # the new value applies from the boundary on


def test_step_hand_values() -> None:
    s = Step([0.0, 0.1, 0.3], [5, 10], unit="epoch")
    assert [s(t) for t in (0, 4.99, 5, 9.99, 10, 100)] == [0.0, 0.0, 0.1, 0.1, 0.3, 0.3]


@SETTINGS
@given(st.lists(st.tuples(st.floats(-100, 100), values), min_size=1, max_size=8), st.data())
def test_piecewise_through_points_and_between_neighbours(
    pts: list[tuple[float, float]], data: st.DataObject
) -> None:
    pts = sorted({t: v for t, v in pts}.items())
    assume(all(b[0] - a[0] > 1e-6 for a, b in itertools.pairwise(pts)))
    s = Piecewise(pts, unit="epoch")
    for t, v in pts:
        assert s(t) == pytest.approx(v, abs=1e-9)
    assert s(pts[0][0] - 50) == pts[0][1]
    assert s(pts[-1][0] + 50) == pts[-1][1]
    t = data.draw(st.floats(pts[0][0], pts[-1][0]))
    i = max(j for j, (tj, _) in enumerate(pts) if tj <= t)
    j = min(i + 1, len(pts) - 1)
    lo, hi = sorted((pts[i][1], pts[j][1]))
    assert lo - 1e-9 <= s(t) <= hi + 1e-9


def test_piecewise_hand_values() -> None:
    s = Piecewise([(0, 0.0), (10, 1.0), (20, 1.0), (30, 0.5)], unit="epoch")
    assert [s(t) for t in (-1, 0, 5, 15, 25, 30, 99)] == pytest.approx(
        [0.0, 0.0, 0.5, 1.0, 0.75, 0.5, 0.5]
    )


# -- validation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: Step([0.0, 1.0], [2.0, 1.0]), "one more value"),
        (lambda: Step([0.0, 1.0, 2.0], [2.0, 1.0]), "strictly increasing"),
        (lambda: Step([0.0, 1.0, 2.0], [1.0, 1.0]), "strictly increasing"),
        (lambda: Step([0.0, float("nan")], [1.0]), "finite"),
        (lambda: Step([0.0, 1.0], [float("inf")]), "finite"),
        (lambda: Piecewise([]), "non-empty"),
        (lambda: Piecewise([(0.0, 1.0), (0.0, 2.0)]), "strictly increasing"),
        (lambda: Piecewise([(1.0, 1.0), (0.0, 2.0)]), "strictly increasing"),
        (lambda: Piecewise([(0.0, 1.0, 2.0)]), "pair"),
        (lambda: Piecewise([(0.0, float("nan"))]), "finite"),
        (lambda: Smoothed(0.0, 1.0, ramp=1.0, mid=1.5), "mid"),
        (lambda: Smoothed(0.0, 1.0, ramp=1.0, beta=1.0), "beta"),
        (lambda: Smoothed(0.0, float("nan"), ramp=1.0), "finite"),
        (lambda: Smoothed(0.0, 1.0), "length of the ramp"),
        (lambda: Cosine(0.0, 1.0, ramp=-1.0), ">= 0"),
        (lambda: Cosine(0.0, 1.0, ramp=0.8, warmup=0.4), "exceeds the whole run"),
        (lambda: Cosine(0.0, 1.0, ramp=1.0, ramp_epochs=2.0), "one unit"),
        (lambda: Cosine(0.0, 1.0, ramp_epochs=2.0, unit="step"), "conflicts"),
        (lambda: Cosine(0.0, 1.0, ramp=1.0, unit="batch"), "unit must be one of"),
        (lambda: Step([0.0], [], unit="iteration"), "unit must be one of"),
    ],
)
def test_bad_arguments_raise_value_error(build, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build()


def test_bad_types_raise_type_error() -> None:
    with pytest.raises(TypeError, match="list of numbers"):
        Step(1.0, [])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="real number"):
        Piecewise([(0.0, "high")])  # type: ignore[list-item]


# -- state_dict ------------------------------------------------------------------------------

EXAMPLES: list[Schedule] = [
    Constant(0.3),
    Linear(0.0, 0.3, ramp_epochs=10, warmup_epochs=2),
    Smoothed(0.0, 0.4, ramp_steps=10_000, warmup_steps=2_000, mid=0.4),
    Cosine(1.0, 0.5, ramp=0.5, warmup=0.1),
    Step([0.0, 0.1, 0.3], [5, 10], unit="epoch"),
    Piecewise([(0, 0.0), (10, 1.0), (30, 0.5)], unit="step"),
]


@pytest.mark.parametrize("schedule", EXAMPLES, ids=lambda s: type(s).__name__)
def test_state_dict_roundtrip(schedule: Schedule) -> None:
    value = schedule(Progress(step=5, epoch=6.0, fraction=0.3))
    # Through JSON, as a logger or an OmegaConf checkpoint would store it (tuples become lists).
    state = json.loads(json.dumps(schedule.state_dict()))
    fresh = build_schedule({"type": state["type"], **state["config"]})
    assert fresh.last_value is None
    fresh.load_state_dict(state)
    assert fresh.last_value == value
    assert fresh.config() == schedule.config()
    rebuilt = build_schedule(state)
    assert rebuilt.last_value == value
    for t in (0.0, 0.2, 3.0, 7.5, 25.0):
        assert rebuilt.value_at(t) == schedule.value_at(t)


@pytest.mark.parametrize(
    ("saved", "other"),
    [
        (Smoothed(0.0, 0.4, ramp=0.5), Smoothed(0.0, 0.4, ramp=0.5, mid=0.3)),
        (Smoothed(0.0, 0.4, ramp=0.5), Cosine(0.0, 0.4, ramp=0.5)),
        (Cosine(0.0, 0.4, ramp=0.5), Cosine(0.0, 0.3, ramp=0.5)),
        (Step([0.0, 1.0], [3]), Step([0.0, 1.0], [4])),
        (Step([0.0, 1.0], [3], unit="epoch"), Step([0.0, 1.0], [3], unit="step")),
        (Piecewise([(0, 0.0), (1, 1.0)]), Piecewise([(0, 0.0), (1, 2.0)])),
        (Linear(0.0, 1.0, ramp=0.5), Cosine(0.0, 1.0, ramp=0.5)),
    ],
)
def test_load_state_dict_mismatch_raises(saved: Schedule, other: Schedule) -> None:
    saved(0.2)
    with pytest.raises(ValueError, match="does not match"):
        other.load_state_dict(saved.state_dict())
    assert other.last_value is None


# -- build_schedule -------------------------------------------------------------------------


def test_build_schedule_from_specs() -> None:
    from omegaconf import OmegaConf

    assert build_schedule(0.25)(0.9) == 0.25
    s = Cosine(0.0, 1.0, ramp=1.0)
    assert build_schedule(s) is s
    cfg = OmegaConf.create(
        {"type": "Step", "values": [0, 1, 2], "boundaries": [1, 2], "unit": "step"}
    )
    built = build_schedule(cfg)
    assert isinstance(built, Step) and built(1.5) == 1.0
    pts = OmegaConf.create({"type": "piecewise", "points": [[0, 0], [4, 2]], "unit": "epoch"})
    assert build_schedule(pts)(1.0) == pytest.approx(0.5)
    sm = build_schedule({"type": "smoothed", "start": 0, "end": 0.3, "ramp_epochs": 60})
    assert isinstance(sm, Smoothed) and sm.unit == "epoch" and sm.ramp == 60


def test_build_schedule_errors() -> None:
    with pytest.raises(ValueError, match="must be one of"):
        build_schedule({"type": "exponential", "start": 0})
    with pytest.raises(ValueError, match="must be one of"):
        build_schedule({"start": 0})
    with pytest.raises(TypeError, match="cannot build Linear"):
        build_schedule({"type": "linear", "start": 0, "end": 1, "length": 3})
    with pytest.raises(TypeError, match="Schedule, a number or a mapping"):
        build_schedule("linear")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not both"):
        build_schedule({"type": "constant", "config": {"value": 1.0}, "value": 2.0})
