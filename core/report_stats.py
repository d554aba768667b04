"""Experiment report statistics: per-variant rates with intervals, lift against control, probability
to beat control, sample ratio mismatch, holdout lift, grouping by a dimension and a time series.

Pure functions over aggregates (no I/O); NumPy is used only for the Beta posterior Monte-Carlo, and
the distributions (normal, Student t, chi-square) come from `edgewise.core.distributions`. See
docs/reports.md for the formulas.

Input: one `VariantCounts` per variant, or several per variant (one per time bucket and/or per value of
a dimension such as segment, channel or country); `build_report` sums them per variant. Summing is only
right when the slices partition the units (a unit is counted in the bucket of its first exposure and in
one value of each dimension), which is how the aggregates are expected to be produced.

Metrics: `conversion` and `ctr` are proportions per unit (`conversions / units`, each unit converted at
most once); `revenue` is revenue per unit (`revenue_sum / units`, a mean, with `revenue_sq_sum` the sum
over units of the squared per-unit revenue, needed for its variance).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Final, Literal, get_args

import numpy as np

from edgewise.core.distributions import STANDARD_NORMAL, chi2_sf, normal_cdf, student_t_ppf

__all__ = [
    "COLUMNS",
    "SERIES_COLUMNS",
    "SRM_THRESHOLD",
    "Lift",
    "Metric",
    "RateEstimate",
    "Report",
    "ReportRow",
    "SeriesPoint",
    "SrmResult",
    "VariantCounts",
    "build_report",
    "combine",
    "estimate",
    "holdout_lift",
    "lift",
    "mean_interval",
    "report_rows_by",
    "srm_test",
    "time_series",
    "welch_interval",
    "wilson_interval",
]

Metric = Literal["conversion", "ctr", "revenue"]
_METRICS: Final = frozenset(get_args(Metric))
SRM_THRESHOLD: Final = 0.001
"""A sample ratio mismatch is flagged when the chi-square p-value is below this."""


# ---------------------------------------------------------------------------------------------------
# Input


@dataclass(frozen=True, slots=True)
class VariantCounts:
    """Aggregates of one variant (optionally of one time bucket and one dimension slice).

    `units`: units exposed; `conversions`: units that converted (clicked, for ctr); `revenue_sum` and
    `revenue_sq_sum`: sum over units of the unit's revenue and of its square. `bucket_ms`: start of the
    time bucket (None: not bucketed); `dimensions`: (name, value) pairs such as ("country", "DE").
    """

    variant: str
    units: int
    conversions: int = 0
    revenue_sum: float = 0.0
    revenue_sq_sum: float = 0.0
    bucket_ms: int | None = None
    dimensions: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.units < 0 or self.conversions < 0:
            raise ValueError(f"{self.variant}: units and conversions must be >= 0")
        if self.conversions > self.units:
            raise ValueError(f"{self.variant}: conversions ({self.conversions}) > units ({self.units})")
        if self.revenue_sq_sum < 0:
            raise ValueError(f"{self.variant}: revenue_sq_sum must be >= 0")

    def dimension(self, name: str) -> str | None:
        return next((v for k, v in self.dimensions if k == name), None)


def combine(counts: Iterable[VariantCounts], variant: str | None = None) -> VariantCounts:
    """The sum of slices as one `VariantCounts` (named `variant`, else the first slice's variant)."""
    units = conversions = 0
    rsum = rsq = 0.0
    name = variant
    for c in counts:
        if name is None:
            name = c.variant
        units += c.units
        conversions += c.conversions
        rsum += c.revenue_sum
        rsq += c.revenue_sq_sum
    return VariantCounts(name or "", units, conversions, rsum, rsq)


# ---------------------------------------------------------------------------------------------------
# Intervals


def _z(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return STANDARD_NORMAL.inv_cdf(0.5 + confidence / 2.0)


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of a proportion (successes out of n, n > 0). Its bounds are exactly 0
    with no successes and exactly 1 with n of them (returned as such, not as centre -/+ half, which
    differ from them by rounding)."""
    if n <= 0:
        raise ValueError("n must be > 0")
    if not 0 <= successes <= n:
        raise ValueError("successes must be in [0, n]")
    z = _z(confidence)
    p = successes / n
    z2n = z * z / n
    centre = (p + z2n / 2.0) / (1.0 + z2n)
    half = z / (1.0 + z2n) * math.sqrt(p * (1.0 - p) / n + z2n / (4.0 * n))
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def _mean_var(n: int, total: float, sq_total: float) -> tuple[float, float]:
    """Mean and sample variance (n - 1 denominator; 0 for n < 2) from a count, sum and sum of squares."""
    mean = total / n
    if n < 2:
        return mean, 0.0
    return mean, max(0.0, (sq_total - total * total / n) / (n - 1))


def mean_interval(
    n: int, total: float, sq_total: float, confidence: float = 0.95
) -> tuple[float, float, float]:
    """(mean, low, high): the normal interval mean ± z·s/√n of a mean from its sufficient statistics."""
    if n <= 0:
        raise ValueError("n must be > 0")
    mean, var = _mean_var(n, total, sq_total)
    half = _z(confidence) * math.sqrt(var / n)
    return mean, mean - half, mean + half


def welch_interval(
    mean1: float,
    var1: float,
    n1: int,
    mean2: float,
    var2: float,
    n2: int,
    confidence: float = 0.95,
) -> tuple[float, float, float, float]:
    """(diff, low, high, df) for mean1 - mean2 with Welch's t interval (var: sample variances).

    df is the Welch–Satterthwaite degrees of freedom; with both variances 0 the interval is the point.
    """
    if n1 < 2 or n2 < 2:
        raise ValueError("Welch's interval needs at least 2 units per group")
    v1, v2 = var1 / n1, var2 / n2
    diff = mean1 - mean2
    se2 = v1 + v2
    if se2 <= 0.0:
        return diff, diff, diff, math.inf
    df = se2 * se2 / (v1 * v1 / (n1 - 1) + v2 * v2 / (n2 - 1))
    half = student_t_ppf(0.5 + confidence / 2.0, df) * math.sqrt(se2)
    return diff, diff - half, diff + half, df


# ---------------------------------------------------------------------------------------------------
# Per-variant estimates and lift


@dataclass(frozen=True, slots=True)
class RateEstimate:
    """A variant's metric value (rate or mean per unit) with its interval; None without units."""

    value: float | None
    low: float | None
    high: float | None


def _check_metric(metric: str) -> None:
    if metric not in _METRICS:
        raise ValueError(f"unknown metric {metric!r} (known: {', '.join(sorted(_METRICS))})")


def estimate(counts: VariantCounts, metric: Metric, confidence: float = 0.95) -> RateEstimate:
    """Wilson interval for proportions, normal interval for revenue per unit."""
    _check_metric(metric)
    if counts.units == 0:
        return RateEstimate(None, None, None)
    if metric == "revenue":
        if counts.units < 2:
            return RateEstimate(counts.revenue_sum / counts.units, None, None)
        return RateEstimate(
            *mean_interval(counts.units, counts.revenue_sum, counts.revenue_sq_sum, confidence)
        )
    low, high = wilson_interval(counts.conversions, counts.units, confidence)
    return RateEstimate(counts.conversions / counts.units, low, high)


@dataclass(frozen=True, slots=True)
class Lift:
    """Treatment versus control. Absolute: treatment - control; relative: treatment / control - 1.

    Fields are None where undefined (no units, control value 0 for the relative lift, fewer than 2
    units per group for revenue).
    """

    absolute: float | None
    absolute_low: float | None
    absolute_high: float | None
    relative: float | None
    relative_low: float | None
    relative_high: float | None
    p_beat: float | None  # P(treatment's true value > control's)


_NO_LIFT: Final = Lift(None, None, None, None, None, None, None)


def _relative(
    mt: float, vt: float, mc: float, vc: float, z: float
) -> tuple[float | None, float | None, float | None]:
    """Delta method for r = mt / mc - 1 with vt, vc the variances of the two estimates. The lower end is
    bounded at -1 (-100%): rates and revenue per unit are never negative, so neither is mt / mc."""
    if mc == 0.0:
        return None, None, None
    rel = mt / mc - 1.0
    se = math.sqrt(vt + (mt / mc) ** 2 * vc) / abs(mc)
    return rel, max(-1.0, rel - z * se), rel + z * se


def lift(
    treatment: VariantCounts,
    control: VariantCounts,
    metric: Metric,
    confidence: float = 0.95,
    *,
    draws: int = 100_000,
    rng: np.random.Generator | None = None,
    control_draws: np.ndarray | None = None,
) -> Lift:
    """Lift of `treatment` over `control` with intervals at `confidence` and P(beat control).

    Proportions: Newcombe's hybrid score interval (from the two Wilson intervals; unlike Wald it stays
    honest for small samples and rates near 0 or 1) for the absolute lift, delta method for the relative
    lift, P(beat) by Monte-Carlo from the Beta(1 + conversions, 1 + units - conversions) posteriors
    (`rng`: a seeded Generator, default seed 0; `control_draws`: the control's posterior draws, so that
    several treatments share them). Revenue: Welch's t interval, delta method, and the normal
    approximation P(beat) = Φ(diff / se).
    """
    _check_metric(metric)
    z = _z(confidence)
    nt, nc = treatment.units, control.units
    if metric == "revenue":
        if nt < 2 or nc < 2:
            return _NO_LIFT
        mt, vart = _mean_var(nt, treatment.revenue_sum, treatment.revenue_sq_sum)
        mc, varc = _mean_var(nc, control.revenue_sum, control.revenue_sq_sum)
        diff, low, high, _ = welch_interval(mt, vart, nt, mc, varc, nc, confidence)
        se = math.sqrt(vart / nt + varc / nc)
        p_beat = (0.5 if diff == 0.0 else float(diff > 0.0)) if se == 0.0 else normal_cdf(diff / se)
        return Lift(diff, low, high, *_relative(mt, vart / nt, mc, varc / nc, z), p_beat)
    if nt == 0 or nc == 0:
        return _NO_LIFT
    pt, pc = treatment.conversions / nt, control.conversions / nc
    vt, vc = pt * (1.0 - pt) / nt, pc * (1.0 - pc) / nc
    diff = pt - pc
    lt, ut = wilson_interval(treatment.conversions, nt, confidence)
    lc, uc = wilson_interval(control.conversions, nc, confidence)
    low = diff - math.sqrt((pt - lt) ** 2 + (uc - pc) ** 2)
    high = diff + math.sqrt((ut - pt) ** 2 + (pc - lc) ** 2)
    gen = rng if rng is not None else np.random.default_rng(0)
    if control_draws is None:
        control_draws = gen.beta(1 + control.conversions, 1 + nc - control.conversions, draws)
    t_draws = gen.beta(1 + treatment.conversions, 1 + nt - treatment.conversions, len(control_draws))
    p_beat = float(np.mean(t_draws > control_draws))
    return Lift(diff, low, high, *_relative(pt, vt, pc, vc, z), p_beat)


def holdout_lift(
    personalized: VariantCounts | Iterable[VariantCounts],
    holdout: VariantCounts | Iterable[VariantCounts],
    metric: Metric,
    confidence: float = 0.95,
    *,
    draws: int = 100_000,
    seed: int = 0,
) -> Lift:
    """Lift of the personalized units (not in the global holdout) over the holdout's units."""
    p = personalized if isinstance(personalized, VariantCounts) else combine(personalized, "personalized")
    h = holdout if isinstance(holdout, VariantCounts) else combine(holdout, "holdout")
    return lift(p, h, metric, confidence, draws=draws, rng=np.random.default_rng(seed))


# ---------------------------------------------------------------------------------------------------
# Sample ratio mismatch


@dataclass(frozen=True, slots=True)
class SrmResult:
    chi2: float
    dof: int
    p_value: float
    srm: bool  # p_value < threshold: the split does not follow the weights; do not trust the lift
    observed: Mapping[str, int] = field(default_factory=dict)
    expected: Mapping[str, float] = field(default_factory=dict)


def srm_test(
    units: Mapping[str, int], weights: Mapping[str, float], threshold: float = SRM_THRESHOLD
) -> SrmResult:
    """Chi-square goodness of fit of units per variant against the configured weights (k - 1 dof).

    Every variant with units must have a weight. A variant with weight 0 but units makes the statistic
    infinite (p = 0). Fewer than 2 weighted variants, or no units: p = 1, no SRM.
    """
    unknown = sorted(set(units) - set(weights))
    if unknown:
        raise ValueError(f"units for variants without a weight: {', '.join(unknown)}")
    if any(w < 0 or not math.isfinite(w) for w in weights.values()):
        raise ValueError("weights must be finite and >= 0")
    total_w = sum(weights.values())
    n = sum(units.get(v, 0) for v in weights)
    observed = {v: units.get(v, 0) for v in weights}
    if total_w <= 0 or n == 0:
        return SrmResult(0.0, max(0, len(weights) - 1), 1.0, False, observed, {v: 0.0 for v in weights})
    expected = {v: n * w / total_w for v, w in weights.items()}
    chi2 = 0.0
    for v, e in expected.items():
        o = observed[v]
        if e == 0.0:
            if o > 0:
                chi2 = math.inf
            continue
        chi2 += (o - e) ** 2 / e
    dof = sum(1 for w in weights.values() if w > 0) - 1
    p = 0.0 if math.isinf(chi2) else (chi2_sf(chi2, dof) if dof >= 1 else 1.0)
    return SrmResult(chi2, max(dof, 0), p, p < threshold, observed, expected)


# ---------------------------------------------------------------------------------------------------
# Report


Cell = str | int | float | bool | None

COLUMNS: Final = (
    "dimension",
    "group",
    "metric",
    "variant",
    "is_control",
    "weight",
    "units",
    "share",
    "expected_share",
    "conversions",
    "revenue_sum",
    "value",
    "value_low",
    "value_high",
    "lift",
    "lift_low",
    "lift_high",
    "rel_lift",
    "rel_lift_low",
    "rel_lift_high",
    "p_beat",
    "srm_p",
    "srm",
)
"""The keys of `Report.records()`, in table / csv column order."""


@dataclass(frozen=True, slots=True)
class ReportRow:
    variant: str
    is_control: bool
    weight: float
    units: int
    share: float | None  # observed share of the report's units
    expected_share: float  # weight / sum of weights
    conversions: int
    revenue_sum: float
    estimate: RateEstimate
    lift: Lift  # all None for the control


@dataclass(frozen=True, slots=True)
class Report:
    metric: Metric
    control: str
    confidence: float
    rows: tuple[ReportRow, ...]
    srm: SrmResult
    dimension: str = ""  # "" for the overall report
    group: str = ""  # the dimension's value

    def row(self, variant: str) -> ReportRow:
        for r in self.rows:
            if r.variant == variant:
                return r
        raise KeyError(variant)

    def records(self) -> list[dict[str, Cell]]:
        """One flat dict per variant with the keys of `COLUMNS` (ready for a table, json or csv)."""
        out: list[dict[str, Cell]] = []
        for r in self.rows:
            out.append(
                {
                    "dimension": self.dimension,
                    "group": self.group,
                    "metric": self.metric,
                    "variant": r.variant,
                    "is_control": r.is_control,
                    "weight": r.weight,
                    "units": r.units,
                    "share": r.share,
                    "expected_share": r.expected_share,
                    "conversions": r.conversions,
                    "revenue_sum": r.revenue_sum,
                    "value": r.estimate.value,
                    "value_low": r.estimate.low,
                    "value_high": r.estimate.high,
                    "lift": r.lift.absolute,
                    "lift_low": r.lift.absolute_low,
                    "lift_high": r.lift.absolute_high,
                    "rel_lift": r.lift.relative,
                    "rel_lift_low": r.lift.relative_low,
                    "rel_lift_high": r.lift.relative_high,
                    "p_beat": r.lift.p_beat,
                    "srm_p": self.srm.p_value,
                    "srm": self.srm.srm,
                }
            )
        return out

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready nested form (dataclasses as dicts)."""
        return asdict(self)


def build_report(
    variants: Iterable[VariantCounts],
    control: str,
    weights: Mapping[str, float],
    metric: Metric,
    *,
    confidence: float = 0.95,
    draws: int = 100_000,
    seed: int = 0,
    srm_threshold: float = SRM_THRESHOLD,
    dimension: str = "",
    group: str = "",
) -> Report:
    """The report of one experiment: slices are summed per variant, rows follow the order of `weights`.

    `weights`: the configured variant weights (any scale); `control` must be one of them. P(beat) is
    deterministic for a given `seed`.
    """
    _check_metric(metric)
    if control not in weights:
        raise ValueError(f"control {control!r} is not one of the variants {sorted(weights)}")
    by_variant: dict[str, list[VariantCounts]] = {v: [] for v in weights}
    for c in variants:
        if c.variant not in by_variant:
            raise ValueError(f"counts for variant {c.variant!r}, which has no weight")
        by_variant[c.variant].append(c)
    totals = {v: combine(cs, v) for v, cs in by_variant.items()}
    srm = srm_test({v: t.units for v, t in totals.items()}, weights, srm_threshold)
    n = sum(t.units for t in totals.values())
    total_w = sum(weights.values())
    rng = np.random.default_rng(seed)
    ctrl = totals[control]
    control_draws = None
    if metric != "revenue" and ctrl.units > 0:
        control_draws = rng.beta(1 + ctrl.conversions, 1 + ctrl.units - ctrl.conversions, draws)
    rows = []
    for v, t in totals.items():
        is_control = v == control
        row_lift = (
            _NO_LIFT
            if is_control
            else lift(t, ctrl, metric, confidence, draws=draws, rng=rng, control_draws=control_draws)
        )
        rows.append(
            ReportRow(
                variant=v,
                is_control=is_control,
                weight=float(weights[v]),
                units=t.units,
                share=t.units / n if n else None,
                expected_share=weights[v] / total_w if total_w > 0 else 0.0,
                conversions=t.conversions,
                revenue_sum=t.revenue_sum,
                estimate=estimate(t, metric, confidence),
                lift=row_lift,
            )
        )
    return Report(metric, control, confidence, tuple(rows), srm, dimension, group)


def report_rows_by(
    variants: Iterable[VariantCounts],
    dimension: str,
    control: str,
    weights: Mapping[str, float],
    metric: Metric,
    *,
    confidence: float = 0.95,
    draws: int = 100_000,
    seed: int = 0,
    srm_threshold: float = SRM_THRESHOLD,
    missing: str = "(none)",
) -> list[Report]:
    """One report per value of `dimension` (sorted by value; slices without it go to `missing`).

    Each group has its own SRM test: a mismatch confined to one segment or channel shows there.
    Records of all groups concatenate into one table (`[r for rep in reports for r in rep.records()]`).
    """
    groups: dict[str, list[VariantCounts]] = {}
    for c in variants:
        value = c.dimension(dimension)
        groups.setdefault(missing if value is None else value, []).append(c)
    return [
        build_report(
            groups[g],
            control,
            weights,
            metric,
            confidence=confidence,
            draws=draws,
            seed=seed,
            srm_threshold=srm_threshold,
            dimension=dimension,
            group=g,
        )
        for g in sorted(groups)
    ]


SERIES_COLUMNS: Final = ("bucket_ms", "variant", "units", "value", "low", "high")


@dataclass(frozen=True, slots=True)
class SeriesPoint:
    bucket_ms: int
    variant: str
    units: int
    value: float | None
    low: float | None
    high: float | None


def time_series(
    variants: Iterable[VariantCounts],
    metric: Metric,
    *,
    confidence: float = 0.95,
    cumulative: bool = True,
    variant_order: Sequence[str] | None = None,
) -> list[SeriesPoint]:
    """Per time bucket and variant, the metric with its interval (for a plot), sorted by bucket.

    Slices without `bucket_ms` are ignored; slices of the same bucket (other dimensions) are summed.
    `cumulative`: each point covers all buckets up to and including its own (the usual read-out: the
    interval narrows as units accrue); otherwise each bucket stands alone.
    """
    _check_metric(metric)
    cells: dict[tuple[int, str], list[VariantCounts]] = {}
    for c in variants:
        if c.bucket_ms is not None:
            cells.setdefault((c.bucket_ms, c.variant), []).append(c)
    buckets = sorted({b for b, _ in cells})
    names = list(variant_order) if variant_order is not None else sorted({v for _, v in cells})
    running = {v: VariantCounts(v, 0) for v in names}
    out: list[SeriesPoint] = []
    for b in buckets:
        for v in names:
            here = combine(cells.get((b, v), []), v)
            if cumulative:
                here = combine([running[v], here], v)
                running[v] = here
            est = estimate(here, metric, confidence)
            out.append(SeriesPoint(b, v, here.units, est.value, est.low, est.high))
    return out
