"""Attribution of outcomes (click, add_to_cart, purchase) to the exposures (decisions served) that led
to them. Pure: no I/O, no clock; timestamps are Unix milliseconds given by the caller.

The rules, specified in docs/reports.md ("Attribution"), in order for one outcome: (1) its
`decision_id`, when that names a known exposure at or before the outcome (no window); else (2) recency
within the window of the outcome's type (`windows`; by default 30 minutes for clicks, 24 hours for
add_to_cart, 7 days for purchases) among the exposures of the same unit or session: the latest that
showed the outcome's item, else the latest of the outcome's placement, else unattributed.

Invariants: an exposure after the outcome is never used; an outcome is attributed at most once
(duplicates by `event_id` are dropped); ties in time are broken by (decision_id, placement, then the
other fields), so the result does not depend on input order.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal

__all__ = [
    "DEFAULT_WINDOWS_MS",
    "Attributed",
    "Attributor",
    "Exposure",
    "Outcome",
    "attribute",
]

MINUTE_MS: Final = 60_000
HOUR_MS: Final = 60 * MINUTE_MS
DAY_MS: Final = 24 * HOUR_MS
DEFAULT_WINDOWS_MS: Final[Mapping[str, int]] = {
    "click": 30 * MINUTE_MS,
    "add_to_cart": DAY_MS,
    "purchase": 7 * DAY_MS,
}
"""Attribution window per outcome type (ms). An outcome type without a window is matched by decision id
only."""

How = Literal["decision_id", "item", "placement", "unattributed"]


@dataclass(frozen=True, slots=True)
class Exposure:
    """One placement of one decision as served to a unit. `items`: the item ids shown (item placements).

    `unit` is the experiment unit (user id, else session id); `session` optionally the session id too,
    so an outcome tracked under the session (before login) still finds the exposure.
    """

    decision_id: str
    unit: str
    placement: str
    campaign: str
    experiment: str
    variant: str
    propensity: float
    items: tuple[str, ...]
    timestamp_ms: int
    session: str = ""
    content_id: str = ""


@dataclass(frozen=True, slots=True)
class Outcome:
    """A tracked outcome. `type`: click, add_to_cart or purchase (any type with a window); `value`: the
    purchase value (0 otherwise); empty strings mean unknown."""

    event_id: str
    type: str
    unit: str
    decision_id: str
    placement: str
    item_id: str
    value: float
    timestamp_ms: int
    session: str = ""


@dataclass(frozen=True, slots=True)
class Attributed:
    outcome: Outcome
    exposure: Exposure | None  # None: unattributed
    how: How

    @property
    def experiment(self) -> str:
        return self.exposure.experiment if self.exposure else ""

    @property
    def variant(self) -> str:
        return self.exposure.variant if self.exposure else ""

    @property
    def latency_ms(self) -> int | None:
        """Time from the exposure to the outcome."""
        return self.outcome.timestamp_ms - self.exposure.timestamp_ms if self.exposure else None


_ExposureKey = tuple[int, str, str, str, str, str, str, str, tuple[str, ...], str, float]


def _exposure_key(e: Exposure) -> _ExposureKey:
    """A total order on exposures: time first, then every field (so ties never depend on input order)."""
    return (
        e.timestamp_ms,
        e.decision_id,
        e.placement,
        e.unit,
        e.session,
        e.campaign,
        e.experiment,
        e.variant,
        e.items,
        e.content_id,
        e.propensity,
    )


def _time(e: Exposure) -> int:
    return e.timestamp_ms


def _outcome_key(o: Outcome) -> tuple[int, str]:
    return (o.timestamp_ms, o.event_id)


def _lookup_keys(unit: str, session: str) -> list[str]:
    keys = []
    if unit:
        keys.append("u\x00" + unit)
    if session:
        keys.append("s\x00" + session)
    return keys


def _by_decision(outcome: Outcome, exposures: Sequence[Exposure]) -> Exposure | None:
    before = sorted((e for e in exposures if e.timestamp_ms <= outcome.timestamp_ms), key=_exposure_key)
    if not before:
        return None
    if outcome.placement:
        for e in before:
            if e.placement == outcome.placement:
                return e
    if outcome.item_id:
        for e in before:
            if outcome.item_id in e.items:
                return e
    return min(before, key=lambda e: (e.placement, e.timestamp_ms))


def _by_recency(
    outcome: Outcome, histories: Iterable[Sequence[Exposure]], window_ms: int
) -> tuple[Exposure | None, How]:
    """Latest exposure showing the item, else latest of the placement, within the window."""
    lo = outcome.timestamp_ms - window_ms
    best_item: Exposure | None = None
    best_placement: Exposure | None = None
    for history in histories:  # each sorted by _exposure_key
        i = bisect.bisect_right(history, outcome.timestamp_ms, key=_time)
        while i > 0:
            i -= 1
            e = history[i]
            if e.timestamp_ms < lo:
                break
            if (
                outcome.item_id
                and outcome.item_id in e.items
                and (best_item is None or _exposure_key(e) > _exposure_key(best_item))
            ):
                best_item = e
            if (
                outcome.placement
                and e.placement == outcome.placement
                and (best_placement is None or _exposure_key(e) > _exposure_key(best_placement))
            ):
                best_placement = e
    if best_item is not None:
        return best_item, "item"
    if best_placement is not None:
        return best_placement, "placement"
    return None, "unattributed"


def _attribute_one(
    outcome: Outcome,
    decisions: Mapping[str, Sequence[Exposure]],
    histories: Mapping[str, Sequence[Exposure]],
    windows: Mapping[str, int],
) -> Attributed:
    if outcome.decision_id:
        exp = _by_decision(outcome, decisions.get(outcome.decision_id, ()))
        if exp is not None:
            return Attributed(outcome, exp, "decision_id")
    window = windows.get(outcome.type)
    if window is None or window < 0:
        return Attributed(outcome, None, "unattributed")
    found = [histories[k] for k in _lookup_keys(outcome.unit, outcome.session) if k in histories]
    exp2, how = _by_recency(outcome, found, window)
    return Attributed(outcome, exp2, how)


def attribute(
    outcomes: Iterable[Outcome],
    exposures: Iterable[Exposure],
    windows: Mapping[str, int] = DEFAULT_WINDOWS_MS,
) -> list[Attributed]:
    """Attribute each outcome (once per `event_id`) to at most one exposure (docs/reports.md, "Attribution").

    Inputs may be in any order; the result is sorted by (outcome time, event id) and is the same for
    every ordering of the inputs. Exposures repeated with the same non-empty (decision_id, placement)
    count once (the earliest).
    """
    unique: list[Exposure] = []
    seen_exposures: set[tuple[str, str]] = set()
    for e in sorted(exposures, key=_exposure_key):
        if e.decision_id:
            if (e.decision_id, e.placement) in seen_exposures:
                continue
            seen_exposures.add((e.decision_id, e.placement))
        unique.append(e)
    decisions: dict[str, list[Exposure]] = {}
    histories: dict[str, list[Exposure]] = {}
    for e in unique:  # in _exposure_key order, so each list stays sorted
        if e.decision_id:
            decisions.setdefault(e.decision_id, []).append(e)
        for k in _lookup_keys(e.unit, e.session):
            histories.setdefault(k, []).append(e)
    out: list[Attributed] = []
    seen: set[str] = set()
    for o in sorted(outcomes, key=_outcome_key):
        if o.event_id in seen:
            continue
        seen.add(o.event_id)
        out.append(_attribute_one(o, decisions, histories, windows))
    return out


class Attributor:
    """Incremental attribution for a stream: exposures are remembered per unit and per session, bounded.

    Memory bounds: at most `max_per_unit` exposures per unit/session key (the oldest are dropped), at most
    `max_units` keys (least recently used dropped), at most `max_decisions` decision ids in the decision
    index (LRU), at most `max_events` event ids remembered for deduplication (LRU). Exposures older than
    the largest window before the newest time seen for their key are pruned as well.

    Equivalence: when every exposure is added before the outcomes that follow it and no bound is hit,
    `add_outcome` gives what `attribute` gives for the same data. An outcome is attributed when it
    arrives; an exposure arriving later does not revise it.
    """

    def __init__(
        self,
        windows: Mapping[str, int] = DEFAULT_WINDOWS_MS,
        *,
        max_per_unit: int = 50,
        max_units: int = 100_000,
        max_decisions: int = 200_000,
        max_events: int = 200_000,
    ) -> None:
        if min(max_per_unit, max_units, max_decisions, max_events) < 1:
            raise ValueError("bounds must be >= 1")
        self.windows = dict(windows)
        self.max_per_unit = max_per_unit
        self.max_units = max_units
        self.max_decisions = max_decisions
        self.max_events = max_events
        self._horizon = max(self.windows.values(), default=0)
        self._histories: OrderedDict[str, list[Exposure]] = OrderedDict()
        self._decisions: OrderedDict[str, list[Exposure]] = OrderedDict()
        self._events: OrderedDict[str, None] = OrderedDict()

    def add_exposure(self, exposure: Exposure) -> None:
        if exposure.decision_id:
            same = self._decisions.get(exposure.decision_id)
            if same is not None and any(e.placement == exposure.placement for e in same):
                return  # a repeated exposure
            if same is None:
                same = self._decisions[exposure.decision_id] = []
            same.append(exposure)
            self._decisions.move_to_end(exposure.decision_id)
            while len(self._decisions) > self.max_decisions:
                self._decisions.popitem(last=False)
        for key in _lookup_keys(exposure.unit, exposure.session):
            history = self._histories.get(key)
            if history is None:
                history = self._histories[key] = []
            self._histories.move_to_end(key)
            bisect.insort(history, exposure, key=_exposure_key)
            cutoff = history[-1].timestamp_ms - self._horizon
            drop = bisect.bisect_left(history, cutoff, key=_time)
            drop = max(drop, len(history) - self.max_per_unit)
            if drop > 0:
                del history[:drop]
            while len(self._histories) > self.max_units:
                self._histories.popitem(last=False)

    def add_outcome(self, outcome: Outcome) -> Attributed | None:
        """The outcome's attribution, or None if its `event_id` was already attributed."""
        if outcome.event_id in self._events:
            self._events.move_to_end(outcome.event_id)
            return None
        self._events[outcome.event_id] = None
        while len(self._events) > self.max_events:
            self._events.popitem(last=False)
        for key in _lookup_keys(outcome.unit, outcome.session):
            if key in self._histories:
                self._histories.move_to_end(key)
        return _attribute_one(outcome, self._decisions, self._histories, self.windows)

    def exposures_held(self) -> int:
        """Exposures held in the per-unit/session histories (an exposure with both counts twice)."""
        return sum(len(h) for h in self._histories.values())

    def units_held(self) -> int:
        return len(self._histories)

    def decisions_held(self) -> int:
        return len(self._decisions)
