"""Item strategies as rule authors write them (`serve` of a campaign or experiment variant), compiled
(docs/rules.md, "Placements and campaigns", describes each field).

{"strategy": "personalized" | "similar" | "popular" | "trending" | "cart" | "replenish",
 "method": "auto" | "embedding" | "cooccurrence",      similar items: how neighbors are found
 "scope": "global" | "country" | "segment",            popular: which popularity to rank by
 "half_life_days": 7,                                  trending: decay of daily counts
 "filters": [{"name": "category", "params": {"category": "fashion"}}, ...],
 "exclude_viewed": true, "exclude_purchased": false,
 "boosts": [{"category": "sports", "weight": 0.2}, {"flag": "sale", "weight": 0.1}, {"tag": "new", ...}],
 "promotions": {"items": ["i1", "i2"], "share": 0.2},  pinned items fill this share of the slots
 "diversity": {"max_per_category": 3, "depth": 1},     at most N items per category (path prefix)
 "rotation": {"max_impressions": 5}}                   items shown N times without a click sink
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = [
    "FILTERS",
    "ITEM_STRATEGIES",
    "Boost",
    "Diversity",
    "Filter",
    "ItemServe",
    "Promotions",
    "StrategyError",
    "compile_filter",
    "compile_item_serve",
]

ITEM_STRATEGIES: Final = frozenset({"personalized", "similar", "popular", "trending", "cart", "replenish"})
METHODS: Final = frozenset({"auto", "embedding", "cooccurrence"})
SCOPES: Final = frozenset({"global", "country", "segment"})
FILTERS: Final[Mapping[str, str]] = {
    "category": "items whose category path is params['category'] or below it",
    "price": "items priced within params['min'] .. params['max'] (either may be omitted)",
    "region": "items available in params['country'] (the request's country is always applied too)",
    "flag": "items whose flag params['flag'] is truthy (or equals params['value'] when given)",
    "tag": "items carrying tag params['tag']",
    "exclude_purchased": "drop items the user bought (live activity)",
    "exclude_viewed": "drop items the user viewed recently (live activity)",
}
_REQUIRED_PARAMS: Final = {
    "category": ("category",),
    "region": ("country",),
    "flag": ("flag",),
    "tag": ("tag",),
}


class StrategyError(ValueError):
    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Filter:
    name: str
    params: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Boost:
    weight: float
    category: str = ""
    flag: str = ""
    tag: str = ""


@dataclass(frozen=True, slots=True)
class Promotions:
    items: tuple[str, ...]
    share: float


@dataclass(frozen=True, slots=True)
class Diversity:
    max_per_category: int
    depth: int


@dataclass(frozen=True, slots=True)
class ItemServe:
    strategy: str
    method: str = "auto"
    scope: str = "global"
    half_life_days: float = 7.0
    filters: tuple[Filter, ...] = ()
    exclude_viewed: bool = True
    exclude_purchased: bool = False
    boosts: tuple[Boost, ...] = ()
    promotions: Promotions | None = None
    diversity: Diversity | None = None
    max_impressions: int = 0  # rotation: 0 = off


def _obj(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise StrategyError(path, f"must be an object, got {type(value).__name__}")
    return value


def _known(obj: Mapping[str, Any], allowed: set[str], path: str) -> None:
    for key in obj:
        if key not in allowed:
            raise StrategyError(f"{path}.{key}", f"unknown field (allowed: {', '.join(sorted(allowed))})")


def _number(value: Any, path: str, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise StrategyError(path, f"must be a number in [{lo}, {hi}], got {value!r}")
    return float(value)


def _choice(value: Any, allowed: frozenset[str], path: str) -> str:
    if value not in allowed:
        raise StrategyError(path, f"must be one of {', '.join(sorted(allowed))}, got {value!r}")
    return str(value)


def _bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise StrategyError(path, f"must be true or false, got {value!r}")
    return value


def compile_filter(name: Any, params: Any, path: str) -> Filter:
    """A named filter with its parameters (strings), validated."""
    if name not in FILTERS:
        raise StrategyError(
            f"{path}.name" if path else "filter", f"unknown filter {name!r} (known: {', '.join(FILTERS)})"
        )
    params = _obj(params if params is not None else {}, f"{path}.params")
    for key, value in params.items():
        if not isinstance(value, str):
            params = {**params, key: str(value)}
    for key in _REQUIRED_PARAMS.get(name, ()):
        if not params.get(key):
            raise StrategyError(f"{path}.params", f"filter {name!r} needs params[{key!r}]")
    if name == "price":
        for key in ("min", "max"):
            raw = params.get(key, "")
            try:
                if raw != "" and float(raw) != float(raw):  # NaN
                    raise ValueError
                if raw != "":
                    float(raw)
            except ValueError:
                raise StrategyError(
                    f"{path}.params", f"filter 'price': {key} must be a number, got {raw!r}"
                ) from None
    return Filter(str(name), dict(params))


def compile_item_serve(doc: Any, path: str) -> ItemServe:
    spec = _obj(doc, path)
    _known(
        spec,
        {
            "strategy",
            "method",
            "scope",
            "half_life_days",
            "filters",
            "exclude_viewed",
            "exclude_purchased",
            "boosts",
            "promotions",
            "diversity",
            "rotation",
        },
        path,
    )
    strategy = _choice(spec.get("strategy"), ITEM_STRATEGIES, f"{path}.strategy")
    filters = []
    raw_filters = spec.get("filters", [])
    if not isinstance(raw_filters, list):
        raise StrategyError(f"{path}.filters", "must be a list")
    for i, f in enumerate(raw_filters):
        fpath = f"{path}.filters[{i}]"
        fspec = _obj(f, fpath)
        _known(fspec, {"name", "params"}, fpath)
        filters.append(compile_filter(fspec.get("name"), fspec.get("params"), fpath))
    boosts = []
    raw_boosts = spec.get("boosts", [])
    if not isinstance(raw_boosts, list):
        raise StrategyError(f"{path}.boosts", "must be a list")
    for i, b in enumerate(raw_boosts):
        bpath = f"{path}.boosts[{i}]"
        bspec = _obj(b, bpath)
        _known(bspec, {"category", "flag", "tag", "weight"}, bpath)
        keys = [k for k in ("category", "flag", "tag") if bspec.get(k)]
        if len(keys) != 1:
            raise StrategyError(bpath, "a boost names exactly one of category, flag, tag")
        boosts.append(
            Boost(
                _number(bspec.get("weight"), f"{bpath}.weight", -100, 100), **{keys[0]: str(bspec[keys[0]])}
            )
        )
    promotions = None
    if "promotions" in spec:
        ppath = f"{path}.promotions"
        pspec = _obj(spec["promotions"], ppath)
        _known(pspec, {"items", "share"}, ppath)
        items = pspec.get("items")
        if not isinstance(items, list) or not items or not all(isinstance(i, str) for i in items):
            raise StrategyError(f"{ppath}.items", "must be a non-empty list of item ids")
        promotions = Promotions(tuple(items), _number(pspec.get("share", 0.2), f"{ppath}.share", 0.0, 1.0))
    diversity = None
    if "diversity" in spec:
        dpath = f"{path}.diversity"
        dspec = _obj(spec["diversity"], dpath)
        _known(dspec, {"max_per_category", "depth"}, dpath)
        diversity = Diversity(
            int(_number(dspec.get("max_per_category"), f"{dpath}.max_per_category", 1, 1000)),
            int(_number(dspec.get("depth", 1), f"{dpath}.depth", 1, 10)),
        )
    max_impressions = 0
    if "rotation" in spec:
        rpath = f"{path}.rotation"
        rspec = _obj(spec["rotation"], rpath)
        _known(rspec, {"max_impressions"}, rpath)
        max_impressions = int(_number(rspec.get("max_impressions"), f"{rpath}.max_impressions", 1, 10_000))
    return ItemServe(
        strategy=strategy,
        method=_choice(spec.get("method", "auto"), METHODS, f"{path}.method"),
        scope=_choice(spec.get("scope", "global"), SCOPES, f"{path}.scope"),
        half_life_days=_number(spec.get("half_life_days", 7.0), f"{path}.half_life_days", 0.01, 3650),
        filters=tuple(filters),
        exclude_viewed=_bool(
            spec.get("exclude_viewed", strategy in ("personalized", "similar")), f"{path}.exclude_viewed"
        ),
        exclude_purchased=_bool(spec.get("exclude_purchased", False), f"{path}.exclude_purchased"),
        boosts=tuple(boosts),
        promotions=promotions,
        diversity=diversity,
        max_impressions=max_impressions,
    )
