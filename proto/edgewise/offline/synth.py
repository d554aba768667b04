"""Synthetic bundles: a realistic catalog, profiles, rules and embeddings, deterministic for a seed.

The catalog spreads items over a two-level category tree (e.g. "sports/running") with log-normal prices
per category and Zipf-like popularity; ~20% of the items are sold in a few countries only. Profiles carry
the attributes declared in schema.json (country, device, interests, value, needs, ...); ~10% lack the
`personalization` consent. Item embeddings sit around their category's centroid and user embeddings
around their interests' centroids, so a user scores items of their interests higher than random ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from edgewise.sync.bundle import load_bundle
from edgewise.sync.bundle_write import write_bundle

__all__ = ["CATEGORY_TREE", "COUNTRIES", "synth_bundle", "synth_rules", "synth_schema"]

# top-level category -> leaf -> median price (EUR)
CATEGORY_TREE: Final[dict[str, dict[str, float]]] = {
    "fashion": {"shoes": 80.0, "dresses": 60.0, "jackets": 120.0, "accessories": 25.0, "menswear": 50.0},
    "home": {"kitchen": 35.0, "furniture": 250.0, "bedding": 60.0, "decor": 30.0},
    "sports": {"running": 70.0, "cycling": 150.0, "fitness": 45.0, "outdoor": 90.0},
    "electronics": {"audio": 120.0, "phones": 450.0, "computers": 900.0, "cameras": 600.0, "gaming": 60.0},
    "beauty": {"skincare": 25.0, "makeup": 18.0, "fragrance": 55.0},
    "toys": {"building": 40.0, "puzzles": 20.0, "baby": 30.0},
    "books": {"fiction": 14.0, "cookbooks": 25.0, "children": 10.0},
    "garden": {"tools": 35.0, "plants": 20.0, "furniture": 200.0},
}
TOP_TAGS: Final[dict[str, tuple[str, ...]]] = {
    "fashion": ("cotton", "leather", "summer", "winter", "casual", "formal"),
    "home": ("wood", "ceramic", "minimalist", "handmade", "set"),
    "sports": ("lightweight", "waterproof", "beginner", "pro", "breathable"),
    "electronics": ("wireless", "bluetooth", "4k", "refurbished", "smart"),
    "beauty": ("vegan", "organic", "sensitive_skin", "travel_size"),
    "toys": ("ages_3_plus", "ages_8_plus", "educational", "wooden"),
    "books": ("paperback", "hardcover", "award_winner", "series"),
    "garden": ("weatherproof", "perennial", "cordless", "organic"),
}
GENERAL_TAGS: Final = ("bestseller", "eco", "premium", "gift_idea", "limited")
COUNTRIES: Final = ("DE", "FR", "GB", "US", "NL", "ES", "IT", "SE", "PL", "AT", "CH", "BE")
COUNTRY_WEIGHTS: Final = (0.22, 0.14, 0.13, 0.12, 0.07, 0.07, 0.07, 0.04, 0.05, 0.03, 0.03, 0.03)
DEVICES: Final = ("mobile", "desktop", "tablet")
DEVICE_WEIGHTS: Final = (0.58, 0.32, 0.10)
AGE_BANDS: Final = ("18-24", "25-34", "35-44", "45-54", "55-64", "65+")
AGE_WEIGHTS: Final = (0.12, 0.26, 0.22, 0.18, 0.13, 0.09)
NEEDS: Final = ("gift", "deal_seeker", "premium", "fast_delivery", "eco_conscious")
# Consumables bought again and again: the replenishment campaign reminds after this many days.
REPLENISH_DAYS: Final = {"beauty/skincare": 30, "beauty/makeup": 45, "home/kitchen": 60}

POPULARITY_EXPONENT: Final = 1.1
VIEWS_PER_USER_PER_DAY: Final = 2.0
RESTRICTED_SHARE: Final = 0.2  # items sold in a few countries only
NO_PERSONALIZATION_SHARE: Final = 0.1
ANALYTICS_SHARE: Final = 0.7
REFERENCE_DATE: Final = np.datetime64("2026-11-01")
REFERENCE_MS: Final = int(datetime(2026, 11, 1, tzinfo=UTC).timestamp() * 1000)
DAY_MS: Final = 86_400_000

Progress = Callable[[str], None]
FloatArray = NDArray[np.float64]


def synth_schema() -> dict[str, Any]:
    """schema.json of synthetic bundles; `email` is declared as PII and never carried."""
    p, a = "personalization", "analytics"
    return {
        "profile_fields": {
            "country": {"type": "string", "purpose": p},
            "device": {"type": "string", "purpose": p},
            "app_user": {"type": "boolean", "purpose": p},
            "age_band": {"type": "string", "purpose": p},
            "interests": {"type": "string[]", "purpose": p},
            "needs": {"type": "string[]", "purpose": p},
            "ltv": {"type": "number", "purpose": a},
            "orders": {"type": "integer", "purpose": a},
            "rfm_segment": {"type": "string", "purpose": a},
            "email": {"type": "string", "purpose": p, "pii": True},
        }
    }


def synth_rules() -> dict[str, Any]:
    """rules.json of synthetic bundles (see docs/rules.md): segments of every kind, campaigns on the
    placements home / pdp_similar / hero_banner / deals / trending / promo_slot, an A/B test and a
    multivariate test in one layer, an algorithm A/B test on home, a bandit, and a 2% global holdout."""
    return {
        "segments": {
            "cart_abandoners": {"behavior": {"cart_abandoned": {"idle_minutes": 30}}},
            "replenishment_due": {"behavior": {"replenishment_due": {}}},
            "fashion_browsers": {
                "behavior": {"viewed": {"category": "fashion", "min_count": 3, "within_days": 7}}
            },
            "dach": {"condition": {"context.country": {"$in": ["DE", "AT", "CH"]}}},
            "sports_fans": {"condition": {"profile.interests": {"$elemMatch": {"$regex": "^sports"}}}},
            "mobile_app": {"condition": {"$or": [{"context.device": "mobile"}, {"profile.app_user": True}]}},
            "young_adults": {"condition": {"profile.age_band": {"$in": ["18-24", "25-34"]}}},
            "high_value": {"condition": {"profile.rfm_segment": {"$in": ["champions", "loyal"]}}},
            "deal_seekers": {"condition": {"profile.needs": {"$in": ["deal_seeker"]}}},
        },
        "holdout": {"salt": "global-holdout", "buckets": 200},
        "layers": {"hero": {"salt": "layer-hero"}},
        "experiments": {
            "hero_test": {
                "salt": "hero_test",
                "layer": "hero",
                "layer_range": [0, 8000],
                "allow_forced": True,
                "variants": [
                    {"id": "control", "weight": 34, "content_id": "hero_default"},
                    {"id": "spring_sale", "weight": 33, "content_id": "hero_spring_sale"},
                    {"id": "new_arrivals", "weight": 33, "content_id": "hero_new_arrivals"},
                ],
            },
            "hero_mv": {
                "layer": "hero",
                "layer_range": [8000, 10000],
                "factors": {"color": ["red", "blue"], "message": ["sale", "new"]},
                "content_template": "hero_{color}_{message}",
            },
            "home_algo": {
                "salt": "home_algo",
                "traffic": 0.2,
                "variants": [
                    {"id": "embedding", "serve": {"strategy": "personalized"}},
                    {
                        "id": "diverse",
                        "serve": {"strategy": "personalized", "diversity": {"max_per_category": 2}},
                    },
                ],
            },
        },
        "bandits": {
            "promo_bandit": {
                "exploration_floor": 0.05,
                "arms": [
                    {"id": "free_shipping", "content_id": "promo_shipping", "alpha": 12, "beta": 300},
                    {"id": "ten_off", "content_id": "promo_ten_off", "alpha": 18, "beta": 310},
                    {"id": "gift_wrap", "content_id": "promo_gift_wrap", "alpha": 5, "beta": 150},
                ],
                "segments": {
                    "deal_seekers": {
                        "arms": [
                            {"id": "free_shipping", "alpha": 4, "beta": 60},
                            {"id": "ten_off", "alpha": 12, "beta": 50},
                            {"id": "gift_wrap", "alpha": 1, "beta": 40},
                        ]
                    }
                },
            }
        },
        "placements": {
            "home": {
                "kind": "items",
                "default_count": 10,
                "max_count": 50,
                "default": {"strategy": "popular", "scope": "country"},
                "campaigns": [
                    {
                        "id": "cart_reminder",
                        "priority": 100,
                        "audience": ["cart_abandoners"],
                        "serve": {"strategy": "cart"},
                    },
                    {
                        "id": "replenish",
                        "priority": 90,
                        "audience": ["replenishment_due"],
                        "serve": {"strategy": "replenish"},
                    },
                    {"id": "home_algo_test", "priority": 20, "serve": {"experiment": "home_algo"}},
                    {
                        "id": "personal",
                        "priority": 10,
                        "serve": {"strategy": "personalized", "rotation": {"max_impressions": 8}},
                    },
                ],
            },
            "pdp_similar": {
                "kind": "items",
                "default_count": 8,
                "max_count": 50,
                "campaigns": [{"id": "similar", "serve": {"strategy": "similar"}}],
            },
            "hero_banner": {
                "kind": "content",
                "default_content": "hero_default",
                "campaigns": [
                    {"id": "hero_ab", "serve": {"experiment": "hero_test"}},
                    {"id": "hero_multivariate", "serve": {"experiment": "hero_mv"}},
                ],
            },
            "deals": {
                "kind": "items",
                "default_count": 6,
                "max_count": 30,
                "campaigns": [
                    {
                        "id": "deals_for_deal_seekers",
                        "priority": 10,
                        "audience": ["deal_seekers"],
                        "serve": {
                            "strategy": "personalized",
                            "filters": [{"name": "flag", "params": {"flag": "sale"}}],
                            "diversity": {"max_per_category": 2},
                        },
                    },
                    {
                        "id": "deals_popular",
                        "priority": 0,
                        "serve": {
                            "strategy": "popular",
                            "scope": "country",
                            "boosts": [{"flag": "sale", "weight": 50}],
                            "promotions": {"items": ["i0", "i1"], "share": 0.2},
                            "diversity": {"max_per_category": 2},
                        },
                    },
                ],
            },
            "trending": {
                "kind": "items",
                "default_count": 10,
                "max_count": 50,
                "default": {"strategy": "trending", "half_life_days": 3},
                "campaigns": [
                    {
                        "id": "sports_fans_popular",
                        "audience": ["sports_fans"],
                        "serve": {"strategy": "popular", "scope": "segment"},
                    },
                ],
            },
            "promo_slot": {
                "kind": "content",
                "default_content": "promo_default",
                "campaigns": [{"id": "promo", "serve": {"bandit": "promo_bandit"}}],
            },
        },
        "contents": {
            "hero_default": {"title": "New season", "image": "hero/default.jpg", "link": "/new"},
            "hero_spring_sale": {"title": "Spring sale: 20% off", "image": "hero/sale.jpg", "link": "/sale"},
            "hero_new_arrivals": {"title": "Just landed", "image": "hero/new.jpg", "link": "/new-arrivals"},
            "hero_red_sale": {"title": "Sale", "color": "red"},
            "hero_red_new": {"title": "New in", "color": "red"},
            "hero_blue_sale": {"title": "Sale", "color": "blue"},
            "hero_blue_new": {"title": "New in", "color": "blue"},
            "promo_default": {"text": "Free returns"},
            "promo_shipping": {"text": "Free shipping today"},
            "promo_ten_off": {"text": "10% off your basket"},
            "promo_gift_wrap": {"text": "Free gift wrap"},
        },
        "cold_start_min_views": 1,
    }


def _unit_rows(matrix: FloatArray) -> FloatArray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    unit: FloatArray = matrix / np.maximum(norms, 1e-12)
    return unit


class _Catalog:
    """The category tree as arrays: leaves, their top-level parents and centroid vectors."""

    def __init__(self, rng: np.random.Generator, dim: int) -> None:
        self.tops = list(CATEGORY_TREE)
        self.leaves = [f"{top}/{leaf}" for top, leaves in CATEGORY_TREE.items() for leaf in leaves]
        self.leaf_top = np.array([self.tops.index(path.split("/")[0]) for path in self.leaves])
        self.leaf_median = np.array(
            [CATEGORY_TREE[top][leaf] for top, leaf in (p.split("/") for p in self.leaves)]
        )
        self.leaf_share = rng.dirichlet(np.full(len(self.leaves), 3.0))
        self.top_centroids = _unit_rows(rng.standard_normal((len(self.tops), dim)))
        leaf_offsets = _unit_rows(rng.standard_normal((len(self.leaves), dim)))
        self.leaf_centroids = _unit_rows(self.top_centroids[self.leaf_top] + 0.8 * leaf_offsets)
        # interest "nodes": every top-level category, then every leaf
        self.nodes = self.tops + self.leaves
        self.node_centroids = np.vstack([self.top_centroids, self.leaf_centroids])
        top_share = np.bincount(self.leaf_top, weights=self.leaf_share, minlength=len(self.tops))
        node_weights = np.concatenate([0.4 * top_share, 0.6 * self.leaf_share])
        self.node_weights = node_weights / node_weights.sum()


def _item_records(
    rng: np.random.Generator, catalog: _Catalog, n_items: int, n_users: int
) -> tuple[list[dict[str, Any]], FloatArray, NDArray[np.int64]]:
    """Item records, their popularity (expected views per day) and their leaf indexes."""
    leaf = rng.choice(len(catalog.leaves), size=n_items, p=catalog.leaf_share)
    raw_price = np.exp(np.log(catalog.leaf_median[leaf]) + rng.normal(0.0, 0.55, n_items))
    price = np.where(raw_price >= 5.0, np.floor(raw_price) + 0.99, np.round(raw_price, 2))
    restricted = rng.random(n_items) < RESTRICTED_SHARE
    n_regions = rng.integers(1, 7, n_items)
    days_old = rng.integers(0, 3 * 365, n_items)
    launch = np.datetime_as_string(REFERENCE_DATE - days_old.astype("timedelta64[D]"), unit="D")
    on_sale = rng.random(n_items) < 0.15
    discount = rng.choice(np.array([10, 20, 30, 40]), n_items)
    exclusive = rng.random(n_items) < 0.03
    n_tags = rng.integers(0, 4, n_items)
    tag_draws = rng.random((n_items, 3))
    ranks = rng.permutation(n_items) + 1.0
    weights = ranks**-POPULARITY_EXPONENT
    popularity = weights / weights.sum() * (max(n_users, 1) * VIEWS_PER_USER_PER_DAY)
    country_p = np.array(COUNTRY_WEIGHTS) / sum(COUNTRY_WEIGHTS)

    records: list[dict[str, Any]] = []
    for i in range(n_items):
        path = catalog.leaves[leaf[i]]
        vocabulary = TOP_TAGS[path.split("/")[0]] + GENERAL_TAGS
        tags = sorted({vocabulary[int(u * len(vocabulary))] for u in tag_draws[i, : n_tags[i]]})
        if restricted[i]:
            picked = rng.choice(len(COUNTRIES), size=int(n_regions[i]), replace=False, p=country_p)
            regions = sorted(COUNTRIES[c] for c in picked)
        else:
            regions = ["*"]
        flags: dict[str, Any] = {}
        if on_sale[i]:
            flags["sale"] = True
            flags["discount_pct"] = int(discount[i])
        if days_old[i] < 60:
            flags["new"] = True
        if exclusive[i]:
            flags["exclusive"] = True
        replenish = REPLENISH_DAYS.get(path)
        if replenish is not None:
            flags["replenish_days"] = replenish
        records.append(
            {
                "id": f"i{i}",
                "category": path,
                "tags": tags,
                "price": float(price[i]),
                "regions": regions,
                "launch_date": str(launch[i]),
                "flags": flags,
            }
        )
    return records, popularity, leaf


def _item_embeddings(
    rng: np.random.Generator, catalog: _Catalog, leaf: NDArray[np.int64], dim: int
) -> FloatArray:
    noise = rng.normal(0.0, 0.7 / np.sqrt(dim), (len(leaf), dim))
    return _unit_rows(catalog.leaf_centroids[leaf] + noise)


class _Users:
    """Every profile attribute as a column, drawn at once."""

    def __init__(self, rng: np.random.Generator, catalog: _Catalog, n: int) -> None:
        self.n = n
        self.country = rng.choice(len(COUNTRIES), n, p=np.array(COUNTRY_WEIGHTS) / sum(COUNTRY_WEIGHTS))
        self.device = rng.choice(len(DEVICES), n, p=DEVICE_WEIGHTS)
        app_p = np.array([0.55, 0.08, 0.30])[self.device]
        self.app_user = rng.random(n) < app_p
        self.age_band = rng.choice(len(AGE_BANDS), n, p=AGE_WEIGHTS)
        self.has_age = rng.random(n) < 0.85
        # 1-3 distinct interests among the category nodes (top-level or leaf)
        self.interest_idx = rng.choice(len(catalog.nodes), size=(n, 3), p=catalog.node_weights)
        n_interests = rng.integers(1, 4, n)
        idx = self.interest_idx
        fresh = np.ones((n, 3), dtype=bool)
        fresh[:, 1] = idx[:, 1] != idx[:, 0]
        fresh[:, 2] = (idx[:, 2] != idx[:, 0]) & (idx[:, 2] != idx[:, 1])
        self.interest_mask = fresh & (np.arange(3)[None, :] < n_interests[:, None])
        # value: lifetime value, orders, recency -> RFM segment
        self.ltv = np.round(rng.lognormal(np.log(120.0), 1.0, n), 2)
        self.orders = rng.poisson(self.ltv / 60.0)
        recency = rng.exponential(60.0, n)
        self.rfm = np.select(
            [
                (self.orders == 0) | ((self.orders <= 1) & (recency < 30)),
                recency > 180,
                recency > 90,
                (self.orders >= 8) & (self.ltv >= 500),
                self.orders >= 4,
            ],
            ["new", "hibernating", "at_risk", "champions", "loyal"],
            default="potential",
        )
        low_value = self.ltv < np.median(self.ltv)
        high_value = self.ltv > np.quantile(self.ltv, 0.8)
        need_p = np.column_stack(
            [
                np.full(n, 0.15),
                np.where(low_value, 0.35, 0.15),
                np.where(high_value, 0.25, 0.05),
                np.full(n, 0.15),
                np.full(n, 0.10),
            ]
        )
        self.needs = rng.random((n, len(NEEDS))) < need_p
        self.personalization = rng.random(n) >= NO_PERSONALIZATION_SHARE
        self.analytics = rng.random(n) < ANALYTICS_SHARE
        self.personalization_ms = REFERENCE_MS - rng.integers(0, 365 * DAY_MS, n)
        self.analytics_ms = REFERENCE_MS - rng.integers(0, 365 * DAY_MS, n)

    def embeddings(self, rng: np.random.Generator, catalog: _Catalog, dim: int) -> FloatArray:
        centroids = catalog.node_centroids[self.interest_idx]  # [n, 3, dim]
        mask = self.interest_mask[:, :, None]
        mean = (centroids * mask).sum(axis=1) / mask.sum(axis=1)
        noise = rng.normal(0.0, 0.3 / np.sqrt(dim), (self.n, dim))
        return _unit_rows(mean + noise)

    def records(self, catalog: _Catalog, progress: Progress | None) -> Iterator[dict[str, Any]]:
        cols = {
            "country": self.country.tolist(),
            "device": self.device.tolist(),
            "app_user": self.app_user.tolist(),
            "age_band": self.age_band.tolist(),
            "has_age": self.has_age.tolist(),
            "interest_idx": self.interest_idx.tolist(),
            "interest_mask": self.interest_mask.tolist(),
            "ltv": self.ltv.tolist(),
            "orders": self.orders.tolist(),
            "rfm": self.rfm.tolist(),
            "needs": self.needs.tolist(),
            "personalization": self.personalization.tolist(),
            "analytics": self.analytics.tolist(),
            "personalization_ms": self.personalization_ms.tolist(),
            "analytics_ms": self.analytics_ms.tolist(),
        }
        step = max(1, self.n // 10)
        for j in range(self.n):
            attributes: dict[str, Any] = {
                "country": COUNTRIES[cols["country"][j]],
                "device": DEVICES[cols["device"][j]],
                "app_user": cols["app_user"][j],
            }
            if cols["has_age"][j]:
                attributes["age_band"] = AGE_BANDS[cols["age_band"][j]]
            attributes["interests"] = [
                catalog.nodes[node]
                for node, keep in zip(cols["interest_idx"][j], cols["interest_mask"][j], strict=True)
                if keep
            ]
            attributes["needs"] = [need for need, has in zip(NEEDS, cols["needs"][j], strict=True) if has]
            attributes["ltv"] = cols["ltv"][j]
            attributes["orders"] = cols["orders"][j]
            attributes["rfm_segment"] = cols["rfm"][j]
            consent: dict[str, int] = {}
            if cols["personalization"][j]:
                consent["personalization"] = cols["personalization_ms"][j]
            if cols["analytics"][j]:
                consent["analytics"] = cols["analytics_ms"][j]
            yield {"id": f"u{j}", "attributes": attributes, "consent": consent}
            if progress is not None and ((j + 1) % step == 0 or j + 1 == self.n):
                progress(f"profiles {j + 1}/{self.n}")


NEIGHBORS: Final = 50  # precomputed nearest neighbors per item (similar items without a catalog scan)


def _embedding_neighbors(
    embeddings: NDArray[np.float32], k: int, chunk: int = 1024
) -> tuple[NDArray[np.int32], NDArray[np.float32]]:
    """Each item's k most similar other items by dot product (rows padded with -1 / 0)."""
    n = embeddings.shape[0]
    k_eff = min(k, n - 1)
    rows = np.full((n, k), -1, dtype=np.int32)
    scores = np.zeros((n, k), dtype=np.float32)
    if k_eff <= 0:
        return rows, scores
    for start in range(0, n, chunk):
        block = embeddings[start : start + chunk] @ embeddings.T
        block[np.arange(block.shape[0]), np.arange(start, start + block.shape[0])] = -np.inf  # no self
        top = np.argpartition(-block, k_eff - 1, axis=1)[:, :k_eff]
        top_scores = np.take_along_axis(block, top, axis=1)
        order = np.lexsort((top, -top_scores), axis=1)
        rows[start : start + block.shape[0], :k_eff] = np.take_along_axis(top, order, axis=1)
        scores[start : start + block.shape[0], :k_eff] = np.take_along_axis(top_scores, order, axis=1)
    return rows, scores


TRENDING_SHARE: Final = 0.05  # items whose views grow over the last weeks
DAILY_DAYS: Final = 28


def _daily_counts(rng: np.random.Generator, popularity: FloatArray) -> NDArray[np.float32]:
    """Views per item per day over the last DAILY_DAYS days; a few items trend up, the rest are flat."""
    n = popularity.shape[0]
    growth = np.ones(n)
    trending = np.less(rng.random(n), TRENDING_SHARE)
    growth[trending] = rng.uniform(1.1, 1.3, int(np.count_nonzero(trending)))
    days = np.arange(DAILY_DAYS) - (DAILY_DAYS - 1)  # -27 .. 0
    rate = (
        popularity[:, None]
        * np.power(growth[:, None], days[None, :])
        / np.power(growth, -DAILY_DAYS / 2)[:, None]
    )
    return rng.poisson(rate).astype(np.float32)


def _scoped_popularity(
    rng: np.random.Generator, popularity: FloatArray, items: list[dict[str, Any]]
) -> dict[str, NDArray[np.float32]]:
    """Popularity per country (local tastes) and for the sports_fans segment."""
    out: dict[str, NDArray[np.float32]] = {}
    for country in COUNTRIES:
        taste = rng.lognormal(0.0, 0.5, popularity.shape[0])
        available = np.array(["*" in i["regions"] or country in i["regions"] for i in items])
        out[f"country:{country}"] = (popularity * taste * available).astype(np.float32)
    sports = np.array([i["category"].startswith("sports/") for i in items])
    out["segment:sports_fans"] = (popularity * np.where(sports, 5.0, 1.0)).astype(np.float32)
    return out


def synth_bundle(
    out: str | Path,
    *,
    users: int,
    items: int,
    seed: int,
    dim: int = 32,
    version: int = 1,
    progress: Progress | None = None,
) -> Path:
    """Write a synthetic bundle of `users` profiles and `items` items to `out` (same seed, same data)."""
    if users < 1 or items < 1 or dim < 1:
        raise ValueError(f"need users >= 1, items >= 1 and dim >= 1, got {users}, {items}, {dim}")
    rng = np.random.default_rng(seed)
    catalog = _Catalog(rng, dim)
    item_records, popularity, leaf = _item_records(rng, catalog, items, users)
    item_emb = _item_embeddings(rng, catalog, leaf, dim)
    if progress is not None:
        progress(f"items {items}/{items}")
    profiles = _Users(rng, catalog, users)
    user_emb = profiles.embeddings(rng, catalog, dim)
    extra_rng = np.random.default_rng([seed, 1])  # a stream of its own: the data above stays as it was
    daily = _daily_counts(extra_rng, popularity)
    neighbors, neighbor_scores = _embedding_neighbors(item_emb.astype(np.float32), NEIGHBORS)
    by_scope = _scoped_popularity(extra_rng, popularity, item_records)
    path = write_bundle(
        out,
        version=version,
        schema=synth_schema(),
        items=item_records,
        profiles=profiles.records(catalog, progress),
        rules=synth_rules(),
        item_embeddings=item_emb.astype(np.float32),
        item_popularity=popularity.astype(np.float32),
        user_embeddings=user_emb.astype(np.float32),
        item_neighbors=neighbors,
        item_neighbor_scores=neighbor_scores,
        item_daily_counts=daily,
        daily_counts_end=str(REFERENCE_DATE),
        popularity_by_scope=by_scope,
        generator=f"edgewise bundle synth --users {users} --items {items} --seed {seed} --dim {dim}",
        validate=False,
    )
    if progress is not None:
        progress("validating")
    load_bundle(path)  # the generator's own output must pass the edge's validation
    return path
