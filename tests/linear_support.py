"""A contextual bandit added to a copy of the synthetic bundle (for the pipeline and process tests)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from conftest import rewrite_manifest

ARMS = ("shipping", "ten_off", "gift_wrap")


def contextual_bandit_doc() -> dict[str, Any]:
    """A contextual bandit on device, channel, a consented profile attribute and a segment (d = 7)."""
    return {
        "context": [
            {"path": "context.device", "values": ["mobile", "desktop"]},
            {"path": "context.channel", "values": ["web", "app"]},
            {"path": "profile.age_band", "values": ["18-24"]},
            {"segment": "deal_seekers"},
        ],
        "arms": [
            {"id": "shipping", "content_id": "promo_shipping"},
            {"id": "ten_off", "content_id": "promo_ten_off"},
            {"id": "gift_wrap", "content_id": "promo_gift_wrap"},
        ],
        "exploration_floor": 0.1,
        "temperature": 0.05,
        "ucb": 0.5,
    }


def add_contextual_bandit(bundle: Path, doc: dict[str, Any] | None = None) -> None:
    """Add bandit `ctx_bandit` and the content placement `ctx_slot` serving it; rewrite the manifest."""
    rules = json.loads((bundle / "rules.json").read_text())
    rules["bandits"]["ctx_bandit"] = doc or contextual_bandit_doc()
    rules["placements"]["ctx_slot"] = {
        "kind": "content",
        "default_content": "promo_default",
        "campaigns": [{"id": "ctx", "serve": {"bandit": "ctx_bandit"}}],
    }
    (bundle / "rules.json").write_text(json.dumps(rules))
    rewrite_manifest(bundle)
