"""Rules: segments, placements and their campaigns, experiments, bandits and contents, compiled once per
version (see docs/rules.md for the document a rule author writes).

`compile_rules` turns the `rules.json` document of a bundle into an immutable `Ruleset`, or raises
`RuleError` naming the dotted path of the offending field. Nothing here is parsed per request.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from edgewise.core.bandits import BanditError, BanditPolicy, compile_bandit
from edgewise.core.conditions import ConditionError, saved_groups
from edgewise.core.experiments import (
    Experiment,
    ExperimentError,
    Holdout,
    compile_experiments,
    compile_holdout,
)
from edgewise.core.json_limits import find_problem, join_path
from edgewise.core.linear_bandits import LinearBanditPolicy, compile_linear_bandit, is_contextual
from edgewise.core.saved_groups import MemberIndex, compile_saved_groups
from edgewise.core.segments import SegmentSet, compile_segments
from edgewise.core.strategies import ItemServe, StrategyError, compile_item_serve

__all__ = [
    "DAYS",
    "Campaign",
    "Placement",
    "RuleError",
    "Ruleset",
    "Schedule",
    "compile_rules",
]

MAX_COUNT_CAP: Final = 200
DAYS: Final = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_ID: Final = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_LEGACY_STRATEGIES: Final = frozenset({"personalized", "similar", "popular", "content"})


class RuleError(ValueError):
    """A rules document that does not compile; `path` is the dotted path of the offending field."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.reason = message


@dataclass(frozen=True, slots=True)
class Schedule:
    start_ms: int | None = None  # UTC, inclusive
    end_ms: int | None = None  # UTC, exclusive
    local_hours: tuple[int, int] | None = None  # [from, to) in the request's local time; wraps past midnight
    days: frozenset[int] | None = None  # local weekdays, Monday = 0

    def active(self, now_ms: int, local: datetime | None) -> bool:
        if self.start_ms is not None and now_ms < self.start_ms:
            return False
        if self.end_ms is not None and now_ms >= self.end_ms:
            return False
        if local is None:
            return self.local_hours is None and self.days is None
        if self.days is not None and local.weekday() not in self.days:
            return False
        if self.local_hours is not None:
            lo, hi = self.local_hours
            hour = local.hour
            return lo <= hour < hi if lo < hi else (hour >= lo or hour < hi)
        return True


@dataclass(frozen=True, slots=True)
class Campaign:
    id: str
    priority: int
    audience: tuple[str, ...]  # segment ids that must all match
    exclude: tuple[str, ...]  # segment ids that must not match
    channels: frozenset[str]  # empty = every channel
    schedule: Schedule | None
    content_id: str = ""  # serves fixed content
    experiment_id: str = ""  # serves an experiment's variant
    bandit_id: str = ""  # serves a bandit's arm
    items: ItemServe | None = None  # serves an item strategy


@dataclass(frozen=True, slots=True)
class Placement:
    id: str
    kind: str  # "items" | "content"
    default_count: int
    max_count: int
    default_content: str
    default_items: ItemServe  # the default experience of an item placement (popularity)
    campaigns: tuple[Campaign, ...]  # by priority, highest first

    @property
    def segments(self) -> frozenset[str]:
        return frozenset(s for c in self.campaigns for s in (*c.audience, *c.exclude))


@dataclass(frozen=True, slots=True)
class Ruleset:
    placements: Mapping[str, Placement]
    experiments: Mapping[str, Experiment]
    variant_items: Mapping[tuple[str, str], ItemServe]  # (experiment, variant) -> item strategy
    bandits: Mapping[str, BanditPolicy | LinearBanditPolicy]
    bandit_contents: Mapping[tuple[str, str], str]  # (bandit, arm) -> content id
    contents: Mapping[str, Mapping[str, Any]]
    segments: SegmentSet
    holdout: Holdout | None
    cold_start_min_views: int


def _obj(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise RuleError(path, f"must be an object, got {type(value).__name__}")
    return value


def _int(obj: Mapping[str, Any], key: str, path: str, default: int, lo: int, hi: int) -> int:
    value = obj.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise RuleError(f"{path}.{key}", f"must be an integer in [{lo}, {hi}], got {value!r}")
    return value


def _known(obj: Mapping[str, Any], allowed: set[str], path: str) -> None:
    for key in obj:
        if key not in allowed:
            raise RuleError(f"{path}.{key}", f"unknown field (allowed: {', '.join(sorted(allowed))})")


def _ids(value: Any, path: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise RuleError(path, "must be a list of ids")
    return tuple(value)


def _time_ms(value: Any, path: str) -> int:
    try:
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise RuleError(path, f"must be an ISO 8601 date-time with offset, got {value!r}") from None
    if moment.tzinfo is None:
        raise RuleError(path, f"needs a UTC offset (e.g. 2026-12-01T00:00:00Z), got {value!r}")
    return int(moment.timestamp() * 1000)


def _schedule(doc: Any, path: str) -> Schedule:
    spec = _obj(doc, path)
    _known(spec, {"start", "end", "local_hours", "days"}, path)
    start = _time_ms(spec["start"], f"{path}.start") if "start" in spec else None
    end = _time_ms(spec["end"], f"{path}.end") if "end" in spec else None
    if start is not None and end is not None and end <= start:
        raise RuleError(f"{path}.end", "must be after start")
    hours = None
    if "local_hours" in spec:
        raw = spec["local_hours"]
        if not (
            isinstance(raw, list) and len(raw) == 2 and all(isinstance(h, int) and 0 <= h <= 24 for h in raw)
        ):
            raise RuleError(f"{path}.local_hours", f"must be [from, to) hours in 0..24, got {raw!r}")
        if raw[0] == raw[1]:
            raise RuleError(f"{path}.local_hours", "from and to are equal: the window is empty")
        hours = (raw[0] % 24, raw[1] % 24) if raw[1] != 24 else (raw[0], 24)
    days = None
    if "days" in spec:
        raw_days = spec["days"]
        if not isinstance(raw_days, list) or not raw_days or not all(d in DAYS for d in raw_days):
            raise RuleError(f"{path}.days", f"must be a non-empty list of {', '.join(DAYS)}")
        days = frozenset(DAYS.index(d) for d in raw_days)
    return Schedule(start, end, hours, days)


def _items(doc: Any, path: str) -> ItemServe:
    try:
        return compile_item_serve(doc, path)
    except StrategyError as exc:
        raise RuleError(exc.path, exc.reason) from None


def _legacy_placement(spec: dict[str, Any], pid: str) -> dict[str, Any]:
    """The first bundle format's placement (`strategy`, `experiment`) in today's terms."""
    strategy = spec.get("strategy")
    out = {k: v for k, v in spec.items() if k not in ("strategy", "experiment")}
    if strategy == "content":
        out["kind"] = "content"
        if spec.get("experiment"):
            out["campaigns"] = [{"id": f"{pid}-experiment", "serve": {"experiment": spec["experiment"]}}]
    else:
        out["kind"] = "items"
        out["campaigns"] = [{"id": f"{pid}-{strategy}", "serve": {"strategy": strategy}}]
    return out


def _campaign(doc: Any, path: str, kind: str, ctx: _Context) -> Campaign:
    spec = _obj(doc, path)
    _known(
        spec, {"id", "priority", "audience", "exclude", "channels", "schedule", "serve", "description"}, path
    )
    cid = spec.get("id")
    if not isinstance(cid, str) or not _ID.match(cid):
        raise RuleError(f"{path}.id", f"must be an id ([A-Za-z0-9_.:-], 1..64), got {cid!r}")
    audience = _ids(spec.get("audience", []), f"{path}.audience")
    exclude = _ids(spec.get("exclude", []), f"{path}.exclude")
    for i, sid in enumerate((*audience, *exclude)):
        if sid not in ctx.segments.ids:
            where = f"{path}.audience[{i}]" if i < len(audience) else f"{path}.exclude[{i - len(audience)}]"
            raise RuleError(where, f"unknown segment {sid!r}")
    channels = frozenset(_ids(spec.get("channels", []), f"{path}.channels"))
    schedule = _schedule(spec["schedule"], f"{path}.schedule") if "schedule" in spec else None
    priority = _int(spec, "priority", path, 0, -1_000_000, 1_000_000)
    serve = _obj(spec.get("serve"), f"{path}.serve")
    base = Campaign(cid, priority, audience, exclude, channels, schedule)
    spath = f"{path}.serve"
    if "experiment" in serve:
        _known(serve, {"experiment"}, spath)
        eid = serve["experiment"]
        if eid not in ctx.experiments:
            raise RuleError(f"{spath}.experiment", f"unknown experiment {eid!r}")
        experiment = ctx.experiments[eid]
        for i, v in enumerate(experiment.variants):
            vpath = f"experiments.{eid}.variants[{i}]"
            if kind == "content":
                ctx.require_content(v.content_id, f"{vpath}.content_id")
            elif v.serve is None:
                raise RuleError(f"{vpath}.serve", f"item placement {path} needs an item strategy per variant")
            else:
                ctx.variant_items[(eid, v.id)] = _items(v.serve, f"{vpath}.serve")
        return Campaign(**{**_fields(base), "experiment_id": eid})
    if "bandit" in serve:
        _known(serve, {"bandit"}, spath)
        bid = serve["bandit"]
        if bid not in ctx.bandits:
            raise RuleError(f"{spath}.bandit", f"unknown bandit {bid!r}")
        if kind != "content":
            raise RuleError(f"{spath}.bandit", "bandits choose content: use them in content placements")
        return Campaign(**{**_fields(base), "bandit_id": bid})
    if "content" in serve:
        _known(serve, {"content"}, spath)
        if kind != "content":
            raise RuleError(f"{spath}.content", "fixed content is for content placements")
        ctx.require_content(serve["content"], f"{spath}.content")
        return Campaign(**{**_fields(base), "content_id": serve["content"]})
    if kind != "items":
        raise RuleError(spath, "a content placement serves content, an experiment or a bandit")
    return Campaign(**{**_fields(base), "items": _items(serve, spath)})


def _fields(campaign: Campaign) -> dict[str, Any]:
    return {name: getattr(campaign, name) for name in Campaign.__slots__}


@dataclass
class _Context:
    contents: Mapping[str, Any]
    segments: SegmentSet
    experiments: Mapping[str, Experiment]
    bandits: Mapping[str, BanditPolicy | LinearBanditPolicy]
    variant_items: dict[tuple[str, str], ItemServe]

    def require_content(self, content_id: Any, path: str) -> None:
        if not isinstance(content_id, str) or content_id not in self.contents:
            raise RuleError(path, f"unknown content {content_id!r}")


def _placement(pid: str, body: Any, ctx: _Context) -> Placement:
    if not _ID.match(pid):  # it is in every exposure record's id, and in metrics labels
        raise RuleError(f"placements.{pid[:80]}", "a placement id must be an id ([A-Za-z0-9_.:-], 1..64)")
    path = f"placements.{pid}"
    spec = _obj(body, path)
    if "strategy" in spec:
        if spec["strategy"] not in _LEGACY_STRATEGIES:
            raise RuleError(
                f"{path}.strategy",
                f"unknown strategy {spec['strategy']!r} (known: {sorted(_LEGACY_STRATEGIES)})",
            )
        if spec.get("experiment") and spec["experiment"] not in ctx.experiments:
            raise RuleError(f"{path}.experiment", f"unknown experiment {spec['experiment']!r}")
        spec = _legacy_placement(spec, pid)
    _known(
        spec,
        {"kind", "default_count", "max_count", "default_content", "default", "campaigns", "description"},
        path,
    )
    kind = spec.get("kind")
    if kind not in ("items", "content"):
        raise RuleError(f"{path}.kind", f"must be 'items' or 'content', got {kind!r}")
    max_count = _int(spec, "max_count", path, 50, 1, MAX_COUNT_CAP)
    default_count = _int(spec, "default_count", path, min(10, max_count), 1, max_count)
    default_content = spec.get("default_content", "")
    if kind == "content":
        ctx.require_content(default_content, f"{path}.default_content")
    default_items = _items(
        spec.get("default", {"strategy": "popular", "scope": "country"}), f"{path}.default"
    )
    if default_items.strategy not in ("popular", "trending"):
        raise RuleError(f"{path}.default.strategy", "the default experience is popular or trending")
    raw = spec.get("campaigns", [])
    if not isinstance(raw, list):
        raise RuleError(f"{path}.campaigns", "must be a list")
    campaigns = [_campaign(c, f"{path}.campaigns[{i}]", kind, ctx) for i, c in enumerate(raw)]
    seen: set[str] = set()
    for i, c in enumerate(campaigns):
        if c.id in seen:
            raise RuleError(f"{path}.campaigns[{i}].id", f"duplicate campaign id {c.id!r}")
        seen.add(c.id)
    ordered = tuple(sorted(campaigns, key=lambda c: -c.priority))  # stable: list order breaks ties
    return Placement(pid, kind, default_count, max_count, default_content, default_items, ordered)


def compile_rules(doc: Any, stored_groups: Mapping[str, MemberIndex] | None = None) -> Ruleset:
    """Validate and compile a rules document; raise RuleError naming the offending field.

    `stored_groups`: saved group id -> the members stored as records (core/saved_groups.py), besides the
    groups' inline `values`.

    The document is checked against `core.json_limits` first (nesting depth, integer range), without
    recursion, so nothing below recurses deeper than MAX_DEPTH or stores what msgpack cannot hold."""
    root = _obj(doc, "rules")
    problem = find_problem(root)
    if problem is not None:
        raise RuleError(join_path("", problem[0]) or "rules", problem[1])
    _known(
        root,
        {
            "placements",
            "experiments",
            "layers",
            "holdout",
            "bandits",
            "contents",
            "segments",
            "saved_groups",
            "cold_start_min_views",
            "description",
        },
        "rules",
    )
    contents = {
        cid: _obj(body, f"contents.{cid}") for cid, body in _obj(root.get("contents", {}), "contents").items()
    }
    try:
        groups = compile_saved_groups(root.get("saved_groups", {}), stored_groups)
        with saved_groups(groups):  # $inGroup / $notInGroup resolve against these; unknown: refused
            segments = compile_segments(root.get("segments", {}))
    except ConditionError as exc:
        raise RuleError(exc.path, exc.reason) from None
    try:
        experiments = compile_experiments(root.get("experiments", {}), root.get("layers"))
        holdout = compile_holdout(root.get("holdout"))
    except ExperimentError as exc:
        raise RuleError(exc.path, exc.reason) from None
    bandits: dict[str, BanditPolicy | LinearBanditPolicy] = {}
    bandit_contents: dict[tuple[str, str], str] = {}
    for bid, body in _obj(root.get("bandits", {}), "bandits").items():
        try:
            if is_contextual(body):
                bandits[bid] = compile_linear_bandit(body, f"bandits.{bid}", segments)
            else:
                bandits[bid] = compile_bandit(body, f"bandits.{bid}")
        except BanditError as exc:
            raise RuleError(exc.path, exc.reason) from None
        for i, arm in enumerate(_obj(body, f"bandits.{bid}").get("arms", [])):
            content_id = arm.get("content_id") if isinstance(arm, dict) else None
            if not isinstance(content_id, str) or content_id not in contents:
                raise RuleError(f"bandits.{bid}.arms[{i}].content_id", f"unknown content {content_id!r}")
            bandit_contents[(bid, arm["id"])] = content_id
    ctx = _Context(contents, segments, experiments, bandits, {})
    placements_doc = _obj(root.get("placements"), "placements")
    if not placements_doc:
        raise RuleError("placements", "at least one placement is required")
    placements = {pid: _placement(pid, body, ctx) for pid, body in placements_doc.items()}
    for eid, body in _obj(root.get("experiments", {}), "experiments").items():
        pid = body.get("placement") if isinstance(body, dict) else None
        if pid is not None and pid not in placements:
            raise RuleError(f"experiments.{eid}.placement", f"unknown placement {pid!r}")
    return Ruleset(
        placements=placements,
        experiments=experiments,
        variant_items=ctx.variant_items,
        bandits=bandits,
        bandit_contents=bandit_contents,
        contents=contents,
        segments=segments,
        holdout=holdout,
        cold_start_min_views=_int(root, "cold_start_min_views", "rules", 1, 0, 1000),
    )
