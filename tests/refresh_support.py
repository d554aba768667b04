"""A tiny bundle and forwarded-event payloads for the model refresh tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from edgewise.core.activity import Event
from edgewise.core.exposure import EXPOSURE_KIND
from edgewise.sync.bundle_write import write_bundle

N_ITEMS = 6
T0 = 1_764_000_000_000
RULES: dict[str, Any] = {
    "segments": {"germans": {"condition": {"profile.country": "DE"}}},
    "placements": {
        "top": {"kind": "items", "default_count": 3, "default": {"strategy": "popular"}},
        "top_de": {
            "kind": "items",
            "default_count": 3,
            "default": {"strategy": "popular", "scope": "country"},
        },
        "sim": {
            "kind": "items",
            "default_count": 2,
            "default": {"strategy": "popular"},
            "campaigns": [{"id": "similar", "serve": {"strategy": "similar", "method": "cooccurrence"}}],
        },
    },
}


def tiny_bundle(out: Path, version: int = 1) -> Path:
    """6 items (i0 the most popular, i5 the least), 10 profiles (u0..u4 in DE, u5..u9 in FR), neighbours
    i -> i+1, a DE popularity scope and 3 days of daily counts."""
    n = N_ITEMS
    nb = np.array([[(i + 1) % n, -1] for i in range(n)], dtype=np.int32)
    return write_bundle(
        out,
        version=version,
        schema={"profile_fields": {"country": {"type": "string", "purpose": "personalization"}}},
        items=[
            {"id": f"i{i}", "category": "shop/things", "price": 1.0 + i, "regions": ["*"]} for i in range(n)
        ],
        profiles=[
            {
                "id": f"u{u}",
                "attributes": {"country": "DE" if u < 5 else "FR"},
                "consent": {"personalization": T0 - 86_400_000, "analytics": T0 - 86_400_000},
            }
            for u in range(10)
        ],
        rules=RULES,
        item_embeddings=np.random.default_rng(1).random((n, 4)).astype(np.float32),
        item_popularity=np.arange(n, 0, -1, dtype=np.float32),
        item_neighbors=nb,
        item_neighbor_scores=np.where(nb >= 0, 0.5, 0).astype(np.float32),
        item_daily_counts=np.ones((n, 3), dtype=np.float32),
        daily_counts_end="2025-11-24",
        popularity_by_scope={"country:DE": np.arange(n, 0, -1, dtype=np.float32)},
    )


def event(
    event_id: str, kind: str, user: str, item: str, ts: int = T0, decision: str = ""
) -> tuple[str, str, bytes]:
    """A forwarded Track event as the event store ingests it: (kind, id, payload)."""
    payload = Event(event_id, kind, user, "", item, decision, "", 0.0, ts).encode()
    return "event", event_id, payload


def exposure(
    decision: str, user: str, country: str, segments: list[str], ts: int = T0
) -> tuple[str, str, bytes]:
    """A forwarded exposure record (the fields the refresh reads)."""
    record = {
        "k": EXPOSURE_KIND,
        "id": f"{decision}:top",
        "d": decision,
        "u": user,
        "s": "",
        "p": "top",
        "co": country,
        "sg": segments,
        "ts": ts,
        "i": [],
        "st": "popular",
    }
    return "exposure", record["id"], msgpack.packb(record, use_bin_type=True)
