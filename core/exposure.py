"""Exposure records: what one decision showed, as the outbox stores it and the control plane reads it.

One record per placement of a decision, only when the caller granted the `analytics` purpose. A msgpack
map with short keys (`EXPOSURE_KIND` in `k`; `id` is "<decision id>:<placement id>", unique, the
de-duplication key upstream): decision id `d`, user `u`, session `s`, placement `p`, campaign `c`,
experiment or bandit `x`, variant or arm `v`, propensity `pr`, strategy `st`, fallback reason `f`,
items shown `i`, content `ct`, channel `ch`, country `co`, device `dv`, snapshot version `sv`, matched
segments `sg` (those the decision evaluated), time `ts` (Unix ms), and the segment whose bandit
posteriors served `bs` ("" for the global posteriors and for placements that served no bandit), and the
feature vector a contextual bandit chose with `cx` (a list of floats; empty for every other placement).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import msgpack

from edgewise.core._exposure import exposure_records as _exposure_records_c
from edgewise.core.attribution import Exposure
from edgewise.core.decisions import DecideRequest, DecideResponse

__all__ = ["ANALYTICS", "EXPOSURE_KIND", "exposure_from_record", "exposure_records"]

ANALYTICS: Final = "analytics"
EXPOSURE_KIND: Final = "exposure"


_MAP_OF_22: Final = b"\xde\x00\x16"  # msgpack map16 header: the 22 entries of an exposure record


def exposure_records(decision_id: str, request: DecideRequest, decision: DecideResponse) -> list[bytes]:
    """The exposure records of a decision (none without the analytics purpose).

    This runs on Decide's thread, so it is packed in C (`core/_exposure.pyx`: the bytes of the reference
    below, written into one buffer); a value of a type the compiled packer does not write falls back to
    the reference."""
    if ANALYTICS not in request.consent:
        return []
    try:
        records: list[bytes] = _exposure_records_c(decision_id, request, decision)
    except TypeError:
        return _exposure_records_py(decision_id, request, decision)
    return records


def _exposure_records_py(decision_id: str, request: DecideRequest, decision: DecideResponse) -> list[bytes]:
    """The reference `core._exposure.exposure_records` is tested against (and the fallback).

    The ten entries every placement shares are packed once per decision and the twelve of each placement
    once each, both as msgpack maps of at most 15 entries (a one-byte header); a record is the header of
    a 22-entry map, then the two maps' entries. (Decoded, the same map as packing one dict.)"""
    if ANALYTICS not in request.consent:
        return []
    context = request.context
    pack = msgpack.Packer(use_bin_type=True).pack  # one per call (not thread-safe): cheaper than packb
    shared = pack(
        {
            "k": EXPOSURE_KIND,
            "d": decision_id,
            "u": request.user_id,
            "s": request.session_id,
            "ch": context.channel,
            "co": context.country,
            "dv": context.device,
            "sv": decision.snapshot_version,
            "sg": list(decision.segments),
            "ts": request.now_ms,
        }
    )[1:]
    head = _MAP_OF_22
    return [
        head
        + pack(
            {
                "id": f"{decision_id}:{p.placement_id}",
                "p": p.placement_id,
                "c": p.campaign,
                "x": p.experiment_id,
                "v": p.variant_id,
                "pr": p.propensity,
                "st": p.strategy,
                "f": int(p.fallback),
                "i": [item.id for item in p.items],
                "ct": p.content_id,
                "bs": p.bandit_segment,
                "cx": p.context_vector,
            }
        )[1:]
        + shared
        for p in decision.placements
    ]


def exposure_from_record(r: Mapping[str, Any]) -> Exposure:
    """A decoded exposure record as an attribution `Exposure` (its unit: the user, else the session)."""
    return Exposure(
        decision_id=str(r.get("d", "")),
        unit=str(r.get("u") or r.get("s") or ""),
        placement=str(r.get("p", "")),
        campaign=str(r.get("c", "")),
        experiment=str(r.get("x", "")),
        variant=str(r.get("v", "")),
        propensity=float(r.get("pr", 1.0)),
        items=tuple(str(i) for i in r.get("i", ())),
        timestamp_ms=int(r.get("ts", 0)),
        session=str(r.get("s", "")),
        content_id=str(r.get("ct", "")),
    )
