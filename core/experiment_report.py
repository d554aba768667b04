"""An experiment's report from the records edges forwarded: exposures and Track outcomes, attributed.

Input: the records as the control plane stores them (exposure maps of `core/exposure.py`, Track events
as `Event.encode` maps). Exposures of the experiment give each unit its variant (a unit's first
exposure decides; a unit seen in two variants is counted in its first and reported as `mixed_units`).
Outcomes are attributed with `core/attribution.attribute` (decision id, else recency windows). Per
variant: units exposed, units that converted (a click for `ctr`, a purchase for `conversion`), revenue
per unit (purchase values, for `revenue`); then `core/report_stats.build_report` (intervals, lift vs
control, P(beat), SRM against the configured weights). `by` slices by `channel` or `country` (of the
unit's first exposure). The holdout's lift compares, over every exposure of every placement, units
served personalized decisions with units in the global holdout.

Over time: each unit is also counted in the time bucket of its first exposure to the experiment (its
conversion and revenue go with it), and `series` is `core/report_stats.time_series` over those buckets:
per bucket and variant, the cumulative units and the metric with its interval, what `edgewise ctl
report --plot` draws. The bucket size is `bucket_ms`, or by default the first of 1 hour, 3 hours, 6
hours, 12 hours, 1 day and 1 week that gives at most 100 buckets over the experiment's exposures.

A record the report cannot use (`core/forwarded.record_problem`: a wrong type, a time out of range, bytes
that did not decode; or an exposure to the experiment naming a variant it does not have) is skipped and
counted in `skipped`; it never fails the report.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from edgewise.core.activity import Event
from edgewise.core.attribution import Exposure, Outcome, attribute
from edgewise.core.decisions import FallbackReason
from edgewise.core.exposure import EXPOSURE_KIND, exposure_from_record
from edgewise.core.forwarded import latest_ms, record_problem
from edgewise.core.report_stats import (
    Lift,
    Metric,
    Report,
    SeriesPoint,
    VariantCounts,
    build_report,
    holdout_lift,
    time_series,
)

__all__ = [
    "BUCKET_SIZES_MS",
    "DIMENSIONS",
    "MAX_BUCKETS",
    "MAX_CHOSEN_BUCKETS",
    "ExperimentReport",
    "ReportError",
    "bucket_size",
    "experiment_report",
    "outcome_from_record",
]

DIMENSIONS: Final = {"channel": "ch", "country": "co", "segment": "sg"}  # segment: a unit may be in several
_OUTCOME_OF: Final = {"ctr": "click", "conversion": "purchase", "revenue": "purchase"}
_HOUR: Final = 3_600_000
BUCKET_SIZES_MS: Final = (_HOUR, 3 * _HOUR, 6 * _HOUR, 12 * _HOUR, 24 * _HOUR, 7 * 24 * _HOUR)
"""The automatic bucket sizes, smallest first: the first giving at most `MAX_BUCKETS` buckets is used."""
MAX_BUCKETS: Final = 100
MAX_CHOSEN_BUCKETS: Final = 10_000
"""The most buckets a bucket size chosen by the caller may give over the experiment's exposures."""
_NO_LATER_THAN: Final = 1 << 63  # no bound on a record's time (the report's time not given)


class ReportError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class ExperimentReport:
    experiment: str
    overall: Report
    slices: tuple[Report, ...]
    holdout: Lift | None
    holdout_units: tuple[int, int]  # (personalized, holdout)
    exposures: int
    outcomes: int
    attributed: int
    mixed_units: int
    bucket_ms: int = _HOUR  # the size of the series' time buckets
    series: tuple[SeriesPoint, ...] = ()  # cumulative, per bucket (start, UTC-aligned) and variant
    skipped: int = 0  # records the report could not use (`core/forwarded.record_problem`, unknown variants)


def bucket_size(first_ms: int, last_ms: int) -> int:
    """The automatic bucket size for exposures from `first_ms` to `last_ms` (see `BUCKET_SIZES_MS`)."""
    for size in BUCKET_SIZES_MS:
        if last_ms // size - first_ms // size + 1 <= MAX_BUCKETS:
            return size
    return BUCKET_SIZES_MS[-1]


def outcome_from_record(r: Mapping[str, Any]) -> Outcome:
    """A forwarded Track event as an outcome to attribute (its unit: the user, else the session)."""
    e = Event.from_record(r)
    return Outcome(
        event_id=e.event_id,
        type=e.type,
        unit=e.user_id or e.session_id,
        decision_id=e.decision_id,
        placement=e.placement_id,
        item_id=e.item_id,
        value=e.value,
        timestamp_ms=e.timestamp_ms,
        session=e.session_id,
    )


def _groups(value: Any) -> tuple[str, ...]:
    """A dimension's value(s) in an exposure record: a string, or a list (segments)."""
    if isinstance(value, list):
        return tuple(str(v) for v in value) or ("(none)",)
    return (str(value) if value else "(none)",)


def experiment_report(
    records: Iterable[Mapping[str, Any]],
    experiment: str,
    weights: Mapping[str, float],
    metric: Metric,
    *,
    by: str = "",
    confidence: float = 0.95,
    seed: int = 0,
    bucket_ms: int | None = None,
    now_ms: int | None = None,
) -> ExperimentReport:
    """`weights`: the experiment's configured variant weights, control first. `bucket_ms`: the size of
    the series' time buckets (None: chosen from the span of the exposures, see `bucket_size`). `now_ms`:
    the time of the report; records later than `core/forwarded.latest_ms(now_ms)` are skipped (None: no
    bound)."""
    if metric not in _OUTCOME_OF:
        raise ReportError(f"metric {metric!r} must be one of {', '.join(_OUTCOME_OF)}")
    if by and by not in DIMENSIONS:
        raise ReportError(f"--by {by!r}: reports can be sliced by {', '.join(DIMENSIONS)}")
    if not weights:
        raise ReportError(f"experiment {experiment!r} has no variants")
    if bucket_ms is not None and bucket_ms <= 0:
        raise ReportError(f"the bucket size must be > 0 ms, got {bucket_ms}")
    exposures: list[Exposure] = []
    outcomes: list[Outcome] = []
    slice_of: dict[str, tuple[str, ...]] = {}  # unit -> its first exposure's dimension value(s)
    all_units: dict[str, bool] = {}  # unit -> in the holdout (any exposure of any placement)
    latest = latest_ms(now_ms) if now_ms is not None else _NO_LATER_THAN
    skipped = 0
    for r in records:
        if record_problem(r, latest) is not None:
            skipped += 1
            continue
        if r.get("k") == EXPOSURE_KIND:
            e = exposure_from_record(r)
            if not e.unit:
                continue
            if e.experiment == experiment and e.variant not in weights:
                skipped += 1  # a variant the experiment does not have (forged, or renamed since)
                continue
            held = int(r.get("f", 0)) == int(FallbackReason.HOLDOUT)
            all_units[e.unit] = all_units.get(e.unit, False) or held
            exposures.append(e)
            if e.experiment == experiment and by:
                slice_of.setdefault(e.unit, _groups(r.get(DIMENSIONS[by])))
        elif "t" in r and "id" in r:
            outcomes.append(outcome_from_record(r))
    mine = sorted((e for e in exposures if e.experiment == experiment), key=lambda e: e.timestamp_ms)
    variant_of: dict[str, str] = {}
    first_ms: dict[str, int] = {}  # unit -> its first exposure to the experiment
    mixed: set[str] = set()
    for e in mine:
        first_ms.setdefault(e.unit, e.timestamp_ms)
        first = variant_of.setdefault(e.unit, e.variant)
        if first != e.variant:
            mixed.add(e.unit)
    wanted = _OUTCOME_OF[metric]
    converted: set[str] = set()
    revenue: dict[str, float] = defaultdict(float)
    attributed = 0
    converted_any: set[str] = set()
    for a in attribute([o for o in outcomes if o.type == wanted], exposures):
        if a.exposure is None:
            continue
        converted_any.add(a.exposure.unit)
        if a.exposure.experiment != experiment or a.exposure.unit not in variant_of:
            continue
        attributed += 1
        converted.add(a.exposure.unit)
        revenue[a.exposure.unit] += a.outcome.value
    size = bucket_ms or (bucket_size(mine[0].timestamp_ms, mine[-1].timestamp_ms) if mine else _HOUR)
    if bucket_ms and mine:
        n = mine[-1].timestamp_ms // size - mine[0].timestamp_ms // size + 1
        if n > MAX_CHOSEN_BUCKETS:
            raise ReportError(
                f"a bucket size of {bucket_ms} ms gives {n} buckets over the experiment's exposures "
                f"(at most {MAX_CHOSEN_BUCKETS}): choose a larger one"
            )
    counts: dict[tuple[str, int], list[float]] = defaultdict(lambda: [0, 0, 0.0, 0.0])
    by_group: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0, 0.0, 0.0])
    for unit, variant in variant_of.items():
        value = revenue.get(unit, 0.0)
        targets = [counts[(variant, first_ms[unit] // size * size)]]
        targets += [by_group[(variant, g)] for g in slice_of.get(unit, ())]
        for c in targets:
            c[0] += 1
            c[1] += unit in converted
            c[2] += value
            c[3] += value**2
    cells = [
        VariantCounts(v, int(c[0]), int(c[1]), c[2], c[3], bucket_ms=b)
        for (v, b), c in sorted(counts.items())
    ]
    group_cells = [
        VariantCounts(v, int(c[0]), int(c[1]), c[2], c[3], dimensions=((by, g),))
        for (v, g), c in sorted(by_group.items())
    ]
    control = next(iter(weights))
    overall = build_report(cells, control, weights, metric, confidence=confidence, seed=seed)
    slices: tuple[Report, ...] = ()
    if by:
        groups = sorted({g for _, g in by_group})
        slices = tuple(
            build_report(
                [c for c in group_cells if c.dimension(by) == g],
                control,
                weights,
                metric,
                confidence=confidence,
                seed=seed,
                dimension=by,
                group=g,
            )
            for g in groups
        )
    personalized = [u for u, held in all_units.items() if not held]
    holdout = [u for u, held in all_units.items() if held]
    lift = None
    if personalized and holdout:
        lift = holdout_lift(
            VariantCounts("personalized", len(personalized), sum(u in converted_any for u in personalized)),
            VariantCounts("holdout", len(holdout), sum(u in converted_any for u in holdout)),
            "conversion" if metric != "ctr" else "ctr",
            confidence,
            seed=seed,
        )
    return ExperimentReport(
        experiment=experiment,
        overall=overall,
        slices=slices,
        holdout=lift,
        holdout_units=(len(personalized), len(holdout)),
        exposures=len(mine),
        outcomes=sum(o.type == wanted for o in outcomes),
        attributed=attributed,
        mixed_units=len(mixed),
        bucket_ms=size,
        series=tuple(time_series(cells, metric, confidence=confidence, variant_order=list(weights))),
        skipped=skipped,
    )
