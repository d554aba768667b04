"""Version targeting, saved groups and GrowthBook bucketing through `edgewise call decide` against a real
edge node serving a bundle that uses them."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import EdgeProcess, rewrite_manifest

from edgewise.core.growthbook_bucketing import bucket_ranges, choose_variation, gb_hash

pytestmark = pytest.mark.slow  # starts an edge node and runs `edgewise call decide`

VIPS = [f"u{i}" for i in range(0, 400, 3)]  # every third synthetic user


def _gb_bundle(bundle: Path) -> None:
    rules = json.loads((bundle / "rules.json").read_text())
    rules["saved_groups"] = {"crm_vips": {"description": "CRM export", "values": VIPS}}
    rules["segments"]["vip"] = {"condition": {"user.id": {"$inGroup": "crm_vips"}}}
    rules["segments"]["app_2_10"] = {"condition": {"context.attributes.app_version": {"$vgte": "2.10.0"}}}
    rules["experiments"]["gb_checkout"] = {
        "bucketing": {"scheme": "growthbook", "hash_version": 2, "seed": "checkout-2026"},
        "variants": [
            {"id": "control", "weight": 0.5, "content_id": "promo_default"},
            {"id": "ten_off", "weight": 0.5, "content_id": "promo_ten_off"},
        ],
    }
    rules["placements"]["gb_banner"] = {
        "kind": "content",
        "default_content": "hero_default",
        "campaigns": [
            {
                "id": "vip_new_app",
                "priority": 100,
                "audience": ["vip", "app_2_10"],
                "serve": {"content": "promo_shipping"},
            },
            {"id": "checkout_test", "priority": 10, "serve": {"experiment": "gb_checkout"}},
        ],
    }
    (bundle / "rules.json").write_text(json.dumps(rules))
    rewrite_manifest(bundle)


def _decide(edge: EdgeProcess, user: str, app_version: str) -> dict[str, Any]:
    result = subprocess.run(
        [
            sys.executable, "-m", "edgewise.cli", "call", "decide", "--target", edge.address,
            "--user", user, "--consent", "personalization", "--context", f"app_version={app_version}",
            "--placement", "gb_banner",
        ],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    placement: dict[str, Any] = json.loads(result.stdout)["placements"][0]
    return placement


def test_versions_groups_and_growthbook_bucketing_through_call_decide(
    edge_factory: Callable[..., EdgeProcess], bundle_copy: Path, tmp_path: Path
) -> None:
    _gb_bundle(bundle_copy)
    edge = edge_factory(tmp_path / "data", bundle_copy)
    ranges = bucket_ranges(2, 1, [0.5, 0.5])
    # none of these users is in the synthetic bundle's global holdout (u3 is)
    for user, version in [
        ("u0", "2.10.0"),
        ("u6", "v2.11.0-rc.1+build.7"),
        ("u0", "2.9.9"),
        ("u1", "2.10.1"),
        ("u4", ""),
        ("u7", "3"),
    ]:
        placement = _decide(edge, user, version)
        vip_new_app = user in VIPS and version not in ("2.9.9", "")
        if vip_new_app:
            assert placement["contentId"] == "promo_shipping", (user, version, placement)
            continue
        n = gb_hash("checkout-2026", user, 2)
        assert n is not None
        variant = choose_variation(n, ranges)
        expected = ["promo_default", "promo_ten_off"][variant]
        assert placement["contentId"] == expected, (user, version, placement)
        assert placement["experimentId"] == "gb_checkout"
        assert placement["variantId"] == ["control", "ten_off"][variant]
        assert placement["propensity"] == pytest.approx(0.5)


def test_a_delta_adds_a_member_through_the_control_plane(
    edge_factory: Callable[..., EdgeProcess], bundle_copy: Path, tmp_path: Path
) -> None:
    from sync_support import control_planes, ops_client, pushed_edge, versions_reach, wait_for

    ops_env, edge_env = {"EDGEWISE_OPS_TOKEN": "ops-secret-19"}, {"EDGEWISE_EDGE_TOKEN": "edge-secret-19"}
    _gb_bundle(bundle_copy)
    newcomer = "u1"  # not a member of crm_vips in the bundle
    assert newcomer not in VIPS
    with control_planes(tmp_path / "cp", {**ops_env, **edge_env}) as start:
        control = start()
        _, edge = pushed_edge(
            control.address, edge_factory, bundle_copy, tmp_path / "edge", "edge-19", ops_env, edge_env
        )
        assert _decide(edge, newcomer, "2.10.0")["contentId"] != "promo_shipping"
        delta = tmp_path / "delta.jsonl"
        delta.write_text(json.dumps({"op": "upsert", "saved_group": "crm_vips", "values": [newcomer]}) + "\n")
        with ops_client(control.address, ops_env) as ops:
            version = ops.push_delta(delta).version
        wait_for(versions_reach([tmp_path / "edge"], version), 20, "the edge at the delta's version")
        assert _decide(edge, newcomer, "2.10.0")["contentId"] == "promo_shipping"
        delta.write_text(json.dumps({"op": "delete", "saved_group": "crm_vips", "values": [newcomer]}) + "\n")
        with ops_client(control.address, ops_env) as ops:
            version = ops.push_delta(delta).version
        wait_for(versions_reach([tmp_path / "edge"], version), 20, "the edge at the second delta's version")
        assert _decide(edge, newcomer, "2.10.0")["contentId"] != "promo_shipping"
