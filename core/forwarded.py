"""Checks of the records edges forward: Track events (`core/activity.Event.encode`) and exposure records
(`core/exposure.py`), as the control plane's `Forward` receives them and its consumers read them back.

Pure. Two levels:

- `check_forwarded` is what `Forward` applies to every record before it is stored: the payload decodes
  to a msgpack map of the record's kind, and every field has the type, range and size the edge's Track
  and Decide give it (the checks of `edge/convert.py`, with the largest caps an edge's configuration
  allows, since the control plane does not know each edge's). A record that fails is never stored.
- `record_problem` is what every consumer of the stored records (the profile folder, the bandit
  learner, reports, retention) asks before it uses one: the types, key sizes and time range it needs. A
  record stored by an older version that fails it is skipped and counted, never retried: it cannot hold
  up the records behind it.

Both answer with the field and what is wrong with it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import msgpack

from edgewise.core.exposure import EXPOSURE_KIND

__all__ = [
    "EARLIEST_EVENT_MS",
    "EVENT_KIND",
    "MAX_FUTURE_MS",
    "MAX_ID_CHARS",
    "MAX_KEY_ID_BYTES",
    "MAX_LIST_ENTRIES",
    "MAX_STRING_CHARS",
    "UNREADABLE",
    "ForwardedKeys",
    "ForwardedRecordError",
    "check_forwarded",
    "latest_ms",
    "record_problem",
]

EVENT_KIND: Final = "event"
EARLIEST_EVENT_MS: Final = 946_684_800_000
"""2000-01-01T00:00:00Z: Track refuses earlier event times (edge/convert.py), so does Forward."""
MAX_KEY_ID_BYTES: Final = 400
"""Event, user and session ids become LMDB keys (the event store's ids and user index, the control
store's profiles): at most this many bytes of UTF-8, as Track allows (edge/convert.py)."""
MAX_ID_CHARS: Final = 65_536
"""Item, decision, placement, campaign and other ids: the largest `limits.max_id_length` an edge's
configuration allows (edge/config.py)."""
MAX_STRING_CHARS: Final = 1 << 20
"""Channel, country, device: the largest `limits.max_string_length` an edge's configuration allows."""
MAX_LIST_ENTRIES: Final = 100_000
"""Items shown and segments matched in one exposure record."""
MAX_FUTURE_MS: Final = (10 * 365 + 1) * 86_400_000
"""How far after the control plane's clock a record's time may be: the largest `max_future_seconds` an
edge's configuration allows (10 years), plus a day for the edge's clock running ahead."""
UNREADABLE: Final = "!unreadable"
"""The one key of the map a store yields in place of a stored record whose bytes do not decode; its
value says why (`record_problem` answers with it)."""

_EVENT_TYPE: Final = re.compile(r"[a-z][a-z0-9_.:-]{0,63}")
_MAX_FALLBACK: Final = 255
_MAX_PROPENSITY: Final = 1.0 + 1e-9  # a bandit's propensity is a sum of floats: 1 may round just above


class ForwardedRecordError(ValueError):
    """A forwarded record that cannot be stored: the message names the field."""


@dataclass(frozen=True, slots=True)
class ForwardedKeys:
    """What the event store keys a checked record by: its id, and its user ("" for none)."""

    event_id: str
    user_id: str


def latest_ms(now_ms: int) -> int:
    """The latest record time accepted at `now_ms` (see `MAX_FUTURE_MS`)."""
    return now_ms + MAX_FUTURE_MS


def check_forwarded(kind: str, payload: bytes, now_ms: int) -> ForwardedKeys:
    """Check one forwarded record (`kind` "event" or "exposure", its msgpack payload) as `Forward`
    receives it at `now_ms`; raise ForwardedRecordError naming the field."""
    if kind not in (EVENT_KIND, EXPOSURE_KIND):
        raise ForwardedRecordError(f"kind: {kind[:40]!r} is not {EVENT_KIND} or {EXPOSURE_KIND}")
    try:
        doc = msgpack.unpackb(payload, raw=False)
    except Exception as exc:  # msgpack raises several unrelated types on corrupt input
        raise ForwardedRecordError(f"payload: not msgpack ({exc})") from exc
    if not isinstance(doc, dict):
        raise ForwardedRecordError(f"payload: a msgpack {type(doc).__name__}, not a map")
    if doc.get("k", EVENT_KIND) != kind:  # a Track event has no `k`
        raise ForwardedRecordError(f"k: {doc.get('k')!r:.40} does not match the record's kind {kind}")
    problem = _problem(doc, earliest=EARLIEST_EVENT_MS, latest=latest_ms(now_ms), strict=True)
    if problem is not None:
        raise ForwardedRecordError(problem)
    return ForwardedKeys(doc["id"], doc.get("u") or "")


def record_problem(record: Mapping[str, Any], latest: int) -> str | None:
    """What makes a stored record (decoded) unusable to the consumers, naming the field; None when it is
    usable. `latest`: the latest time accepted (`latest_ms(now)`)."""
    if UNREADABLE in record:
        return str(record[UNREADABLE])
    return _problem(record, earliest=0, latest=latest, strict=False)


def _problem(doc: Mapping[Any, Any], *, earliest: int, latest: int, strict: bool) -> str | None:
    event_id = doc.get("id")
    if not isinstance(event_id, str) or not event_id:
        return f"id: must be a non-empty string, got {event_id!r:.80}"
    problem = _key_size("id", event_id)
    if problem is not None:
        return problem
    ts = doc.get("ts")
    if not isinstance(ts, int) or isinstance(ts, bool):
        return f"ts: must be an integer (Unix ms), got {ts!r:.80}"
    if not earliest <= ts <= latest:
        return f"ts: {ts} is out of range ({earliest}-{latest} Unix ms)"
    for name in ("u", "s"):
        value = doc.get(name, "")
        if not isinstance(value, str):
            return f"{name}: must be a string, got {value!r:.80}"
        problem = _key_size(name, value)
        if problem is not None:
            return problem
    exposure = doc.get("k") == EXPOSURE_KIND
    caps, checks = (_EXPOSURE_STRINGS, _EXPOSURE_CHECKS) if exposure else (_EVENT_STRINGS, _EVENT_CHECKS)
    for name, value in doc.items():  # one pass over the fields present; strings inline (the most)
        cap = caps.get(name)
        if cap is not None:
            if type(value) is not str or len(value) > cap:
                return f"{name}: {_string(cap)(value)}"
            continue
        check = checks.get(name)
        if check is not None:
            problem = check(value)
            if problem is not None:
                return f"{name}: {problem}"
    if strict and not exposure:
        if not _EVENT_TYPE.fullmatch(str(doc.get("t", ""))):
            return f"t: {doc.get('t')!r:.70} is not an event type (lowercase, e.g. view, click, purchase)"
        if not doc.get("u") and not doc.get("s"):
            return "u: a user id or a session id (s) is required"
    return None


def _key_size(name: str, value: str) -> str | None:
    if len(value) > MAX_KEY_ID_BYTES // 4 and (size := len(value.encode())) > MAX_KEY_ID_BYTES:
        return f"{name}: is {size} bytes of UTF-8, more than the cap of {MAX_KEY_ID_BYTES}"
    return None


def _string(cap: int) -> Callable[[object], str | None]:
    def check(value: object) -> str | None:
        if not isinstance(value, str):
            return f"must be a string, got {value!r:.80}"
        if len(value) > cap:
            return f"is {len(value)} characters long, more than the cap of {cap}"
        return None

    return check


def _strings(value: object) -> str | None:
    if not isinstance(value, list):
        return f"must be a list of strings, got {value!r:.80}"
    if len(value) > MAX_LIST_ENTRIES:
        return f"has {len(value)} entries, more than the cap of {MAX_LIST_ENTRIES}"
    for n, entry in enumerate(value):
        if type(entry) is not str or len(entry) > MAX_ID_CHARS:
            return f"[{n}] {_ID(entry)}"
    return None


def _finite(value: object) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return f"must be a finite number, got {value!r:.80}"
    return None


def _propensity(value: object) -> str | None:
    problem = _finite(value)
    if problem is None and isinstance(value, int | float) and not 0 <= value <= _MAX_PROPENSITY:
        return f"must be between 0 and 1, got {value}"
    return problem


def _vector(value: object) -> str | None:
    """A contextual bandit's feature vector (`cx`): at most 64 finite numbers."""
    if not isinstance(value, list):
        return f"must be a list of numbers, got {value!r:.80}"
    if len(value) > _MAX_VECTOR:
        return f"has {len(value)} entries, more than the cap of {_MAX_VECTOR}"
    for n, entry in enumerate(value):
        problem = _finite(entry)
        if problem is not None:
            return f"[{n}] {problem}"
    return None


def _flag(value: object) -> str | None:
    return None if isinstance(value, bool) else f"must be true or false, got {value!r:.80}"


def _fallback(value: object) -> str | None:
    if not (isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _MAX_FALLBACK):
        return f"must be a fallback reason (an integer 0-{_MAX_FALLBACK}), got {value!r:.80}"
    return None


def _version(value: object) -> str | None:
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        return f"must be a snapshot version (an integer >= 0), got {value!r:.80}"
    return None


_MAX_VECTOR: Final = 64  # edgewise.core.linear_bandits.MAX_FEATURES
_ID: Final = _string(MAX_ID_CHARS)
_EVENT_STRINGS: Final[Mapping[str, int]] = {"t": 64, "i": MAX_ID_CHARS, "d": MAX_ID_CHARS, "p": MAX_ID_CHARS}
_EVENT_CHECKS: Final[Mapping[str, Callable[[object], str | None]]] = {"v": _finite, "pz": _flag, "an": _flag}
_EXPOSURE_STRINGS: Final[Mapping[str, int]] = {
    **{name: MAX_ID_CHARS for name in ("d", "p", "c", "x", "v", "st", "ct", "bs")},
    **{name: MAX_STRING_CHARS for name in ("ch", "co", "dv")},
}
_EXPOSURE_CHECKS: Final[Mapping[str, Callable[[object], str | None]]] = {
    "pr": _propensity,
    "f": _fallback,
    "i": _strings,
    "sv": _version,
    "sg": _strings,
    "cx": _vector,
}
