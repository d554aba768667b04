"""Experiment reports from forwarded records: a known lift is found, a biased split raises SRM, and
`edgewise ctl report` counts what real edges served and tracked."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from edgewise.core.experiment_report import ReportError, bucket_size, experiment_report
from edgewise.ctl import report_plot
from edgewise.sync.control_serve import duration_ms
from edgewise.sync.control_server import report_document
from edgewise.v1 import personalizer_pb2 as pb
from edgewise.v1 import personalizer_pb2_grpc as pb_grpc
from tests.conftest import EdgeProcess
from tests.sync_support import (
    ControlProcess,
    control_planes,
    ctl,
    ops_client,
    pushed_edge,
    wait_for,
)
from tests.test_report_chart import read_png

T0 = 1_780_000_000_000
HOUR = 3_600_000


def _records(
    units: int,
    shares: dict[str, float],
    rates: dict[str, float],
    seed: int,
    holdout_share: float = 0.0,
    spacing_ms: int = 1,
) -> list[dict[str, Any]]:
    """Unit u is exposed at T0 + u * spacing_ms and clicks 1 s later with its variant's rate."""
    rng = np.random.default_rng(seed)
    names = list(shares)
    picks = rng.choice(len(names), size=units, p=[shares[n] for n in names])
    out: list[dict[str, Any]] = []
    for u in range(units):
        variant = names[picks[u]]
        held = rng.random() < holdout_share
        decision = f"d{u}"
        country = "DE" if u % 2 else "FR"
        out.append(
            {
                "k": "exposure",
                "id": f"{decision}:hero",
                "d": decision,
                "u": f"u{u}",
                "s": "",
                "p": "hero",
                "c": "camp",
                "x": "" if held else "exp",
                "v": "" if held else variant,
                "pr": 0.5,
                "f": 7 if held else 0,
                "i": [],
                "ch": "web",
                "co": country,
                "ts": T0 + u * spacing_ms,
            }
        )
        rate = 0.03 if held else rates[variant]
        if rng.random() < rate:
            out.append(
                {
                    "id": f"c{u}",
                    "t": "click",
                    "u": f"u{u}",
                    "s": "",
                    "i": "",
                    "d": decision,
                    "p": "hero",
                    "v": 0.0,
                    "ts": T0 + u * spacing_ms + 1000,
                }
            )
    return out


def test_a_known_lift_is_detected() -> None:
    records = _records(40_000, {"control": 0.5, "treat": 0.5}, {"control": 0.05, "treat": 0.065}, seed=1)
    report = experiment_report(records, "exp", {"control": 1, "treat": 1}, "ctr")
    treat = report.overall.row("treat")
    assert treat.lift.absolute_low is not None and treat.lift.absolute_low > 0
    assert treat.lift.p_beat is not None and treat.lift.p_beat > 0.99
    assert not report.overall.srm.srm
    assert report.exposures == 40_000 and report.attributed == report.outcomes


def test_no_lift_is_not_claimed_and_a_biased_split_raises_srm() -> None:
    fair = _records(20_000, {"control": 0.5, "treat": 0.5}, {"control": 0.05, "treat": 0.05}, seed=2)
    report = experiment_report(fair, "exp", {"control": 1, "treat": 1}, "ctr")
    row = report.overall.row("treat")
    assert row.lift.absolute_low is not None and row.lift.absolute_high is not None
    assert row.lift.absolute_low < 0 < row.lift.absolute_high
    biased = _records(20_000, {"control": 0.53, "treat": 0.47}, {"control": 0.05, "treat": 0.05}, seed=3)
    assert experiment_report(biased, "exp", {"control": 1, "treat": 1}, "ctr").overall.srm.srm


def test_slices_and_the_holdout() -> None:
    records = _records(
        10_000, {"control": 0.5, "treat": 0.5}, {"control": 0.06, "treat": 0.06}, seed=4, holdout_share=0.1
    )
    report = experiment_report(records, "exp", {"control": 1, "treat": 1}, "ctr", by="country")
    assert [s.group for s in report.slices] == ["DE", "FR"]
    assert sum(r.units for s in report.slices for r in s.rows) == report.exposures
    personalized, held = report.holdout_units
    assert personalized + held == 10_000 and 800 < held < 1200
    assert report.holdout is not None and report.holdout.absolute is not None
    assert report.holdout.absolute_low is not None and report.holdout.absolute_low > 0  # 6% vs 3%
    with pytest.raises(ReportError, match="sliced by"):
        experiment_report(records, "exp", {"control": 1, "treat": 1}, "ctr", by="device")


def test_segment_slices_count_a_unit_in_each_segment_it_matched() -> None:
    records = _records(4_000, {"control": 0.5, "treat": 0.5}, {"control": 0.05, "treat": 0.08}, seed=6)
    for n, r in enumerate(r for r in records if r.get("k") == "exposure"):
        r["sg"] = ["vip", "mobile_fans"] if n % 4 == 0 else (["vip"] if n % 4 == 1 else [])
    report = experiment_report(records, "exp", {"control": 1, "treat": 1}, "ctr", by="segment")
    units = {s.group: sum(r.units for r in s.rows) for s in report.slices}
    assert units == {"(none)": 2_000, "mobile_fans": 1_000, "vip": 2_000}
    assert sum(r.units for r in report.overall.rows) == 4_000  # the overall report counts each unit once


def test_the_series_is_cumulative_per_bucket_of_first_exposure() -> None:
    # 3,000 units over 50 hours (one a minute): hourly buckets by default, 51 of them.
    records = _records(
        3000, {"control": 0.5, "treat": 0.5}, {"control": 0.05, "treat": 0.1}, seed=5, spacing_ms=60_000
    )
    report = experiment_report(records, "exp", {"control": 1, "treat": 1}, "ctr")
    assert report.bucket_ms == HOUR
    buckets = sorted({p.bucket_ms for p in report.series})
    assert buckets == [b * HOUR for b in range(T0 // HOUR, (T0 + 2999 * 60_000) // HOUR + 1)]
    assert len(buckets) == 51 and [p.variant for p in report.series[:2]] == ["control", "treat"]
    # Recount by hand: the units exposed (and the clicks of those units) up to each bucket's end.
    variant_of = {r["u"]: r["v"] for r in records if r.get("k") == "exposure"}
    first = {r["u"]: r["ts"] for r in records if r.get("k") == "exposure"}
    clicked = {r["u"] for r in records if r.get("t") == "click"}
    for p in report.series:
        mine = [u for u, v in variant_of.items() if v == p.variant and first[u] < p.bucket_ms + HOUR]
        assert p.units == len(mine)
        assert p.value == pytest.approx(sum(u in clicked for u in mine) / len(mine))
        assert (
            p.low is not None and p.high is not None and p.low - 1e-12 <= p.value <= p.high
        )  # Wilson: ~1e-17 at 0
    last = {p.variant: p for p in report.series if p.bucket_ms == buckets[-1]}
    for row in report.overall.rows:  # the last point is the overall report
        assert (last[row.variant].units, last[row.variant].value) == (row.units, row.estimate.value)
        assert (last[row.variant].low, last[row.variant].high) == (row.estimate.low, row.estimate.high)
    widths = [p.high - p.low for p in report.series if p.variant == "treat" and p.high and p.low]
    assert widths[-1] < widths[len(widths) // 4]  # the interval narrows as units accrue

    daily = experiment_report(records, "exp", {"control": 1, "treat": 1}, "ctr", bucket_ms=24 * HOUR)
    assert daily.bucket_ms == 24 * HOUR and len({p.bucket_ms for p in daily.series}) in (3, 4)
    assert bucket_size(T0, T0 + 30 * 24 * HOUR) == 12 * HOUR  # 30 days: 61 twelve-hour buckets
    assert bucket_size(T0, T0 + 400 * 24 * HOUR) == 7 * 24 * HOUR
    with pytest.raises(ReportError, match="bucket size"):
        experiment_report(records, "exp", {"control": 1, "treat": 1}, "ctr", bucket_ms=0)
    with pytest.raises(ReportError, match=r"gives 179941 buckets .* \(at most 10000\)"):  # 1 s over 2,999 min
        experiment_report(records, "exp", {"control": 1, "treat": 1}, "ctr", bucket_ms=1_000)

    doc = json.loads(json.dumps(report_document(report)))
    assert doc["bucket_size_ms"] == HOUR and len(doc["series"]) == 2 * 51
    assert doc["series"][-1] == {
        "bucket_ms": buckets[-1],
        "variant": "treat",
        "units": last["treat"].units,
        "value": last["treat"].value,
        "low": last["treat"].low,
        "high": last["treat"].high,
    }
    image = read_png(report_plot(doc))
    assert image.shape == (500, 900, 3) and len(np.unique(image.reshape(-1, 3), axis=0)) >= 6


OPS = {"EDGEWISE_OPS_TOKEN": "ops-rep-1"}
EDGE = {"EDGEWISE_EDGE_TOKEN": "edge-rep-1"}


@pytest.fixture
def control(tmp_path: Path) -> Iterator[ControlProcess]:
    with control_planes(tmp_path, {**OPS, **EDGE}) as start:
        yield start()


@pytest.mark.slow
def test_ctl_report_counts_what_the_edges_served(
    control: ControlProcess, edge_factory: Callable[..., EdgeProcess], bundle_dir: Path, tmp_path: Path
) -> None:
    _, edge = pushed_edge(control.address, edge_factory, bundle_dir, tmp_path / "edge", "e1", OPS, EDGE)
    served: dict[str, str] = {}
    clicks = 0
    with grpc.insecure_channel(edge.address) as channel:
        stub = pb_grpc.PersonalizerStub(channel)
        for n in range(60):
            response = stub.Decide(
                pb.DecideRequest(
                    session_id=f"s{n}",
                    consent=["analytics", "personalization"],
                    context=pb.Context(channel="web", country="DE"),
                    placements=[pb.PlacementRequest(placement_id="hero_banner")],
                ),
                timeout=10,
            )
            hero = response.placements[0]
            if hero.experiment_id != "hero_test":
                continue
            served[f"s{n}"] = hero.variant_id
            if n % 3 == 0:
                clicks += 1
                event = pb.Event(
                    event_id=f"click-{n}",
                    type="click",
                    session_id=f"s{n}",
                    decision_id=response.decision_id,
                    placement_id="hero_banner",
                )
                stub.Track(pb.TrackRequest(events=[event], consent=["analytics"]), timeout=10)
    assert len(served) > 20
    with ops_client(control.address, OPS) as ops:
        wait_for(lambda: ops.status().events_total >= 60 + clicks, 20, "exposures and clicks upstream")
    plot = tmp_path / "hero_test.png"
    done = ctl(control.address, "report", "hero_test", "--format", "json", "--plot", str(plot), env=OPS)
    doc = json.loads(done.stdout)  # "wrote FILE" goes to stderr with --format json
    assert f"wrote {plot}" in done.stderr and read_png(plot.read_bytes()).shape == (500, 900, 3)
    assert sum(p["units"] for p in doc["series"] if p["bucket_ms"] == doc["series"][-1]["bucket_ms"]) == len(
        served
    )
    assert doc["exposures"] == len(served) and doc["attributed"] == clicks
    units = {r["variant"]: r["units"] for r in doc["rows"]}
    for variant in set(served.values()):
        assert units[variant] == sum(v == variant for v in served.values())
    table = ctl(control.address, "report", "hero_test", "--plot", str(tmp_path / "t.png"), env=OPS).stdout
    assert "experiment hero_test" in table and "p_beat" in table and f"wrote {tmp_path / 't.png'}" in table
    unwritable = ctl(control.address, "report", "hero_test", "--plot", str(tmp_path), env=OPS, check=False)
    assert unwritable.returncode == 1 and f"cannot write {tmp_path}" in unwritable.stderr
    daily = json.loads(
        ctl(control.address, "report", "hero_test", "--bucket", "1d", "--format", "json", env=OPS).stdout
    )
    assert daily["bucket_size_ms"] == 86_400_000 and daily["rows"] == doc["rows"]
    bad = ctl(control.address, "report", "hero_test", "--bucket", "5x", env=OPS, check=False)
    assert bad.returncode == 2 and "'5x' is not a duration" in bad.stderr
    missing = ctl(control.address, "report", "nope", env=OPS, check=False)
    assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr and "hero_test" in missing.stderr


@pytest.mark.parametrize(
    ("text", "ms"),
    [("90s", 90_000), ("30m", 1_800_000), ("1.5h", 5_400_000), ("1d", 86_400_000), ("2W", 1_209_600_000)],
)
def test_report_bucket_durations(text: str, ms: int) -> None:
    assert duration_ms(text) == ms


@pytest.mark.parametrize("text", ["", "h", "6", "5x", "-1h", "0m", "nanh", "0.5s"])
def test_report_bucket_durations_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        duration_ms(text)
