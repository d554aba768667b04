"""Experiment report statistics (edgewise.core.report_stats) and the distributions under them
(edgewise.core.distributions): distributions and intervals against hand-checked values, detection of a
known lift, coverage under the null, sample ratio mismatch, grouping, time series and holdout lift."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from edgewise.core.distributions import (
    STANDARD_NORMAL,
    chi2_sf,
    normal_cdf,
    regularized_beta,
    regularized_gamma_q,
    student_t_cdf,
    student_t_ppf,
)
from edgewise.core.report_stats import (
    COLUMNS,
    VariantCounts,
    build_report,
    combine,
    estimate,
    holdout_lift,
    lift,
    mean_interval,
    report_rows_by,
    srm_test,
    time_series,
    welch_interval,
    wilson_interval,
)

# --- distributions ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("p", "z"),
    [
        (0.5, 0.0),
        (0.975, 1.959963984540054),
        (0.95, 1.6448536269514722),
        (0.995, 2.5758293035489004),
        (0.001, -3.090232306167813),
        (1e-10, -6.361340902404056),
    ],
)
def test_normal_quantile_and_cdf(p: float, z: float) -> None:
    assert STANDARD_NORMAL.inv_cdf(p) == pytest.approx(z, abs=1e-12)
    assert normal_cdf(STANDARD_NORMAL.inv_cdf(p)) == pytest.approx(p, rel=1e-12)


@pytest.mark.parametrize(
    ("x", "dof", "sf"),
    [
        (3.841458820694124, 1, 0.05),  # the 95% critical values
        (5.991464547107979, 2, 0.05),
        (7.814727903251178, 3, 0.05),
        (11.070497693516351, 5, 0.05),
        (10.827566170662733, 1, 0.001),
        (13.815510557964274, 2, 0.001),
        (124.34211340400407, 100, 0.05),
        (0.5, 3, 0.9188914116546758),
        (32.0, 1, 1.5417257900279904e-08),  # 2 * Phi(-sqrt(32))
    ],
)
def test_chi2_sf_known_values(x: float, dof: int, sf: float) -> None:
    assert chi2_sf(x, dof) == pytest.approx(sf, rel=1e-9)


def test_chi2_sf_closed_forms() -> None:
    for x in (0.01, 0.7, 2.0, 9.5, 40.0, 200.0):
        assert chi2_sf(x, 2) == pytest.approx(math.exp(-x / 2), rel=1e-12)  # dof 2: exponential
        assert chi2_sf(x, 1) == pytest.approx(2 * normal_cdf(-math.sqrt(x)), rel=1e-9)
    assert chi2_sf(0.0, 3) == 1.0
    assert regularized_gamma_q(1.0, 3.0) == pytest.approx(math.exp(-3.0), rel=1e-13)
    # Q(a + 1, x) = Q(a, x) + x^a e^-x / Γ(a + 1)
    for a, x in ((0.5, 0.3), (2.5, 4.0), (7.0, 2.0), (30.0, 35.0)):
        rhs = regularized_gamma_q(a, x) + math.exp(a * math.log(x) - x - math.lgamma(a + 1))
        assert regularized_gamma_q(a + 1, x) == pytest.approx(rhs, rel=1e-11)


def test_student_t_and_incomplete_beta() -> None:
    for df, t in (
        (1, 12.706204736174698),
        (2, 4.302652729749464),
        (10, 2.2281388519862744),
        (30, 2.0422724563012373),
    ):
        assert student_t_ppf(0.975, df) == pytest.approx(t, rel=1e-9)
    assert student_t_ppf(0.975, 1e8) == pytest.approx(1.959963984540054, rel=1e-9)
    assert student_t_cdf(0.0, 5) == pytest.approx(0.5)
    assert student_t_cdf(1.0, 1) == pytest.approx(0.75, rel=1e-12)  # Cauchy: 1/2 + atan(1)/π
    assert regularized_beta(2.0, 3.0, 0.4) == pytest.approx(0.5248, rel=1e-12)
    assert regularized_beta(1.0, 1.0, 0.3) == pytest.approx(0.3, rel=1e-12)


# --- intervals -------------------------------------------------------------------------------------


def test_wilson_interval_hand_checked() -> None:
    # p = 0.1, n = 100, z = 1.96: centre 0.11481, half-width 0.05979
    low, high = wilson_interval(10, 100)
    assert low == pytest.approx(0.0552291, abs=1e-6)
    assert high == pytest.approx(0.1743657, abs=1e-6)
    low, high = wilson_interval(0, 10)  # never below 0, unlike the Wald interval's degenerate point
    assert low == 0.0
    assert high == pytest.approx(0.2775328, abs=1e-6)
    assert wilson_interval(10, 10)[1] == 1.0
    with pytest.raises(ValueError):
        wilson_interval(3, 0)


def test_mean_and_welch_intervals_hand_checked() -> None:
    # values 1..5: mean 3, s^2 = 2.5, se = sqrt(0.5)
    mean, low, high = mean_interval(5, 15.0, 55.0)
    assert mean == 3.0
    assert high - mean == pytest.approx(1.959963984540054 * math.sqrt(0.5), rel=1e-12)
    # Welch, hand-computed: v1 = 4/10, v2 = 9/20, se^2 = 0.85, df = 0.7225 / (0.16/9 + 0.2025/19)
    diff, low, high, df = welch_interval(10.0, 4.0, 10, 8.0, 9.0, 20)
    assert diff == 2.0
    assert df == pytest.approx(0.7225 / (0.16 / 9 + 0.2025 / 19), rel=1e-12)
    assert df == pytest.approx(25.4082, abs=1e-3)
    half = student_t_ppf(0.975, df) * math.sqrt(0.85)
    assert (low, high) == pytest.approx((2.0 - half, 2.0 + half), rel=1e-12)
    assert student_t_ppf(0.975, df) == pytest.approx(2.0577, abs=2e-4)


def test_estimate_and_relative_lift_delta_method() -> None:
    c, t = VariantCounts("c", 10_000, 500), VariantCounts("t", 10_000, 600)
    assert estimate(c, "conversion").value == 0.05
    got = lift(t, c, "conversion")
    assert got.absolute == pytest.approx(0.01)
    se = math.sqrt(0.05 * 0.95 / 1e4 + 0.06 * 0.94 / 1e4)
    # Newcombe's interval: close to Wald at this size, but built from the two Wilson intervals
    assert got.absolute_high == pytest.approx(0.01 + 1.959963984540054 * se, rel=2e-3)
    lt, ut = wilson_interval(600, 10_000)
    lc, uc = wilson_interval(500, 10_000)
    assert got.absolute_low == pytest.approx(0.01 - math.sqrt((0.06 - lt) ** 2 + (uc - 0.05) ** 2))
    assert got.absolute_high == pytest.approx(0.01 + math.sqrt((ut - 0.06) ** 2 + (0.05 - lc) ** 2))
    # small samples: 0 of 7 vs 20 of 100 is not "certainly better" (Wald would give [0.12, 0.28])
    small = lift(VariantCounts("t", 100, 20), VariantCounts("c", 7, 0), "conversion")
    assert small.absolute_low is not None and small.absolute_low < 0.05
    se_rel = math.sqrt(0.06 * 0.94 / 1e4 + (0.06 / 0.05) ** 2 * 0.05 * 0.95 / 1e4) / 0.05
    assert got.relative == pytest.approx(0.2)
    assert got.relative_low == pytest.approx(0.2 - 1.959963984540054 * se_rel)
    zero = lift(t, VariantCounts("c", 100, 0), "conversion")
    assert zero.relative is None and zero.absolute == pytest.approx(0.06)
    assert lift(t, VariantCounts("c", 0), "conversion").absolute is None


def test_relative_lift_intervals_stop_at_minus_100_percent() -> None:
    # 1 of 20 vs 2 of 10: the delta method's lower end is -0.75 - 1.96 * 0.29 = -1.32, a rate below zero.
    small = lift(VariantCounts("t", 20, 1), VariantCounts("c", 10, 2), "conversion")
    assert small.relative == pytest.approx(-0.75)
    se = math.sqrt(0.05 * 0.95 / 20 + 0.25**2 * 0.2 * 0.8 / 10) / 0.2
    assert -0.75 - 1.959963984540054 * se < -1.3
    assert small.relative_low == -1.0
    assert small.relative_high == pytest.approx(-0.75 + 1.959963984540054 * se)
    # Revenue per unit: the same bound.
    revenue = lift(VariantCounts("t", 5, 1, 10.0, 100.0), VariantCounts("c", 5, 4, 40.0, 400.0), "revenue")
    assert revenue.relative == pytest.approx(-0.75) and revenue.relative_low == -1.0
    rng = np.random.default_rng(3)
    for _ in range(300):
        n_t, n_c = (int(x) for x in rng.integers(2, 40, 2))
        got = lift(
            VariantCounts("t", n_t, int(rng.integers(0, n_t + 1))),
            VariantCounts("c", n_c, int(rng.integers(1, n_c + 1))),
            "ctr",
            draws=100,
        )
        assert got.relative_low is not None and got.relative is not None
        assert -1.0 <= got.relative_low <= got.relative


# --- simulated experiments -------------------------------------------------------------------------


def test_known_lift_is_detected() -> None:
    rng = np.random.default_rng(20240501)
    n = 40_000
    counts = [
        VariantCounts("control", n, int(rng.binomial(n, 0.050))),
        VariantCounts("treatment", n, int(rng.binomial(n, 0.060))),
    ]
    report = build_report(counts, "control", {"control": 50, "treatment": 50}, "conversion", seed=1)
    row = report.row("treatment")
    assert row.lift.absolute_low is not None and row.lift.absolute_low > 0
    assert row.lift.absolute_high is not None and row.lift.absolute_low < 0.01 < row.lift.absolute_high
    assert row.lift.relative_low is not None and row.lift.relative_low > 0
    assert row.lift.p_beat is not None and row.lift.p_beat > 0.95
    assert not report.srm.srm
    # deterministic for a seed
    again = build_report(counts, "control", {"control": 50, "treatment": 50}, "conversion", seed=1)
    assert again.row("treatment").lift.p_beat == row.lift.p_beat


def test_null_effect_coverage_near_95_percent() -> None:
    rng = np.random.default_rng(7)
    n, p, sims = 40_000, 0.05, 200
    covered = rel_covered = significant_beat = 0
    for i in range(sims):
        a = VariantCounts("a", n, int(rng.binomial(n, p)))
        b = VariantCounts("b", n, int(rng.binomial(n, p)))
        got = lift(b, a, "conversion", draws=4_000, rng=np.random.default_rng(i))
        assert got.absolute_low is not None and got.absolute_high is not None
        assert got.relative_low is not None and got.relative_high is not None and got.p_beat is not None
        covered += got.absolute_low <= 0.0 <= got.absolute_high
        rel_covered += got.relative_low <= 0.0 <= got.relative_high
        significant_beat += got.p_beat > 0.975 or got.p_beat < 0.025
    assert 0.90 <= covered / sims <= 0.99
    assert 0.90 <= rel_covered / sims <= 0.99
    assert significant_beat / sims <= 0.10


def test_revenue_known_lift_and_null_coverage() -> None:
    rng = np.random.default_rng(3)

    def revenue(variant: str, n: int, mean: float) -> VariantCounts:
        buys = rng.random(n) < 0.05
        per_unit = np.where(buys, rng.lognormal(math.log(mean / 0.05) - 0.125, 0.5, n), 0.0)
        return VariantCounts(variant, n, int(buys.sum()), float(per_unit.sum()), float((per_unit**2).sum()))

    covered = 0
    sims = 200
    for _ in range(sims):
        got = lift(revenue("b", 2_000, 3.0), revenue("a", 2_000, 3.0), "revenue")
        assert got.absolute_low is not None and got.absolute_high is not None
        covered += got.absolute_low <= 0.0 <= got.absolute_high
    assert 0.90 <= covered / sims <= 0.99
    report = build_report(
        [revenue("a", 40_000, 3.0), revenue("b", 40_000, 3.6)], "a", {"a": 1, "b": 1}, "revenue"
    )
    row = report.row("b")
    assert row.lift.absolute_low is not None and row.lift.absolute_low > 0
    assert row.lift.p_beat is not None and row.lift.p_beat > 0.95
    assert report.row("a").estimate.value == pytest.approx(3.0, rel=0.1)


# --- sample ratio mismatch -------------------------------------------------------------------------


def test_srm_biased_split_flagged_fair_split_not() -> None:
    biased = srm_test({"a": 10_400, "b": 9_600}, {"a": 50, "b": 50})  # 52/48 at 20k units
    assert biased.chi2 == pytest.approx(32.0)
    assert biased.dof == 1
    assert biased.p_value < 1e-6
    assert biased.srm
    fair = srm_test({"a": 10_040, "b": 9_960}, {"a": 50, "b": 50})
    assert fair.p_value == pytest.approx(chi2_sf(0.32, 1)) and not fair.srm
    rng = np.random.default_rng(11)
    flagged = 0
    for _ in range(200):
        n_a = int(rng.binomial(20_000, 0.5))
        flagged += srm_test({"a": n_a, "b": 20_000 - n_a}, {"a": 1, "b": 1}).srm
    assert flagged <= 2  # the false alarm rate is 0.1%


def test_srm_weighted_and_edge_cases() -> None:
    # 3 variants weighted 1:1:2, exact split: chi2 0
    exact = srm_test({"a": 2500, "b": 2500, "c": 5000}, {"a": 1, "b": 1, "c": 2})
    assert exact.chi2 == 0.0 and exact.p_value == 1.0 and exact.dof == 2
    off = srm_test({"a": 2500, "b": 2500, "c": 5000}, {"a": 1, "b": 1, "c": 1})
    assert off.srm
    assert srm_test({}, {"a": 1, "b": 1}).p_value == 1.0
    zero_weight = srm_test({"a": 100, "b": 3}, {"a": 1, "b": 0})
    assert zero_weight.srm and zero_weight.p_value == 0.0
    with pytest.raises(ValueError):
        srm_test({"a": 1, "x": 1}, {"a": 1})


def test_report_flags_srm_and_rejects_unknown_variants() -> None:
    counts = [VariantCounts("a", 10_400, 520), VariantCounts("b", 9_600, 480)]
    report = build_report(counts, "a", {"a": 1, "b": 1}, "ctr")
    assert report.srm.srm
    assert all(r["srm"] for r in report.records())
    with pytest.raises(ValueError):
        build_report(counts, "z", {"a": 1, "b": 1}, "ctr")
    with pytest.raises(ValueError):
        build_report(counts, "a", {"a": 1}, "ctr")
    with pytest.raises(ValueError):
        build_report(counts, "a", {"a": 1, "b": 1}, "clicks")  # type: ignore[arg-type]


# --- report shape, grouping, time series, holdout ---------------------------------------------------


def _sliced() -> list[VariantCounts]:
    rng = np.random.default_rng(5)
    out = []
    for day in range(3):
        for country, rate in (("DE", 0.04), ("FR", 0.06)):
            for variant, uplift in (("control", 1.0), ("b", 1.2), ("c", 1.0)):
                n = 3_000
                conv = int(rng.binomial(n, rate * uplift))
                out.append(
                    VariantCounts(
                        variant,
                        n,
                        conv,
                        conv * 20.0,
                        conv * 400.0,
                        bucket_ms=day * 86_400_000,
                        dimensions=(("country", country),),
                    )
                )
    return out


def test_report_records_are_table_ready() -> None:
    weights = {"control": 1, "b": 1, "c": 1}
    report = build_report(_sliced(), "control", weights, "conversion")
    records = report.records()
    assert [r["variant"] for r in records] == ["control", "b", "c"]
    assert all(tuple(r) == COLUMNS for r in records)
    assert records[0]["units"] == 18_000 and records[0]["is_control"] is True
    assert records[0]["lift"] is None and records[0]["p_beat"] is None
    assert records[1]["share"] == pytest.approx(1 / 3)
    json.dumps(records)
    json.dumps(report.as_dict())
    total = combine(c for c in _sliced() if c.variant == "b")
    assert records[1]["conversions"] == total.conversions


def test_report_rows_by_dimension() -> None:
    weights = {"control": 1, "b": 1, "c": 1}
    reports = report_rows_by(_sliced(), "country", "control", weights, "conversion")
    assert [(r.dimension, r.group) for r in reports] == [("country", "DE"), ("country", "FR")]
    for r in reports:
        assert r.row("control").units == 9_000
        assert {rec["group"] for rec in r.records()} == {r.group}
    de, fr = reports
    assert de.row("control").estimate.value is not None and fr.row("control").estimate.value is not None
    assert de.row("control").estimate.value < fr.row("control").estimate.value
    missing = report_rows_by(
        [VariantCounts("control", 10), VariantCounts("b", 10)], "x", "control", weights, "ctr"
    )
    assert [r.group for r in missing] == ["(none)"]


def test_time_series_cumulative_and_per_bucket() -> None:
    points = time_series(_sliced(), "conversion", variant_order=["control", "b", "c"])
    assert [(p.bucket_ms // 86_400_000, p.variant) for p in points[:3]] == [
        (0, "control"),
        (0, "b"),
        (0, "c"),
    ]
    control = [p for p in points if p.variant == "control"]
    assert [p.units for p in control] == [6_000, 12_000, 18_000]
    widths = [p.high - p.low for p in control if p.high is not None and p.low is not None]
    assert widths[0] > widths[1] > widths[2]  # the interval narrows as units accrue
    daily = time_series(_sliced(), "revenue", cumulative=False)
    assert {p.units for p in daily} == {6_000}
    assert len(daily) == 9


def test_holdout_lift() -> None:
    rng = np.random.default_rng(9)
    personalized = [VariantCounts("p", 45_000, int(rng.binomial(45_000, 0.033)))]
    holdout = VariantCounts("h", 5_000, int(rng.binomial(5_000, 0.025)))
    got = holdout_lift(personalized, holdout, "conversion", seed=2)
    assert got.absolute is not None and got.absolute_low is not None and got.absolute_low > 0
    assert got.p_beat is not None and got.p_beat > 0.95
    same = holdout_lift(personalized, holdout, "conversion", seed=2)
    assert same == got


def test_counts_validation() -> None:
    with pytest.raises(ValueError):
        VariantCounts("a", 10, 11)
    with pytest.raises(ValueError):
        VariantCounts("a", -1)
    assert estimate(VariantCounts("a", 0), "ctr").value is None
    assert estimate(VariantCounts("a", 1, 0, 5.0, 25.0), "revenue").low is None
