"""bench.filters (caller-chosen filter values on a large catalog): its requests, and a smoke run on the
small synthetic bundle."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgewise.bench import filters as bench
from edgewise.bench.pipeline import Population, make_requests
from edgewise.sync.bundle import load_bundle


def test_filtered_requests_put_new_and_catalog_values_on_home(bundle_dir: Path) -> None:
    bundle = load_bundle(bundle_dir)
    rng = np.random.default_rng(3)
    plain = make_requests(Population.of(bundle, rng), 300, rng)
    catalog = bench.Catalog.of(bundle)
    filtered, new = bench.filtered_requests(plain, catalog, 0.5, rng)
    assert len(filtered) == len(new) == 300 and 100 < sum(new) < 200
    values: list[tuple[str, tuple[tuple[str, str], ...]]] = []
    for request, original, fresh in zip(filtered, plain, new, strict=True):
        assert [p.placement_id for p in request.placements] == [p.placement_id for p in original.placements]
        (home,) = [p for p in request.placements if p.placement_id == bench.HOME]
        assert all(not p.filter for p in request.placements if p.placement_id != bench.HOME)
        assert home.filter in bench.KINDS
        params = dict(home.filter_params)
        if fresh:
            values.append((home.filter, tuple(sorted(params.items()))))
        elif home.filter == "category":
            assert params["category"] in catalog.categories
        elif home.filter == "tag":
            assert params["tag"] in catalog.tags
        else:
            assert (params["flag"], params.get("value", "")) in catalog.flags
    assert len(set(values)) == len(values)  # every new value is asked once


@pytest.mark.slow  # the setup runs in a process of its own
def test_quick_run_reports_times_memory_and_the_cache(
    bundle_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--quick", "--bundle", str(bundle_dir), "--users", "400", "--items", "300", "--requests", "60"]
    assert bench.main([*args, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["setup"]["items"] == 300 and result["setup"]["filter_index_mb"] is not None
    for key in ("plain", "filtered", "filtered_new_value", "filtered_catalog_value"):
        assert 0 < result[key]["p50_ms"] <= result[key]["p99_ms"] <= result[key]["max_ms"], key
    assert result["plain"]["n"] == result["filtered"]["n"] == 60
    memory = result["memory_mb"]
    assert memory["after_filtered"]["VmRSS"] > 0
    cache = result["derived_cache"]
    assert cache["after_filtered"]["entries"] == cache["after_plain"]["entries"]  # nothing per value
    assert cache["after_filtered"]["bytes"] <= cache["after_filtered"]["max_bytes"]
