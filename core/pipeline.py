"""The decision pipeline: one `DecideInput` and one read view in, one `DecisionOutput` out.

Per placement: consent gate, profile + live activity, strategy (personalized embedding scores, similar
items, popularity, content under an experiment), candidate mask, Cython top-k, fallback with a reason.
A personalization miss is never an error: it is the placement's default plus a `Fallback`. Only a
request the caller must fix raises `RequestError`.

Hot path: candidates are a uint8 mask over item rows, built with NumPy into per-thread scratch
buffers; scoring and top-k run in the Cython kernels; Python loops only touch the caller's own lists
(seeds, excludes, candidates) and the k results.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
from numpy.typing import NDArray

from edgewise.core.activity import activity_key
from edgewise.core.bucketing import bucket
from edgewise.core.decisions import (
    PERSONALIZATION,
    DecideInput,
    DecisionOutput,
    Explanation,
    Fallback,
    ItemOut,
    PlacementAsk,
    PlacementExplanation,
    PlacementOutput,
    RequestError,
)
from edgewise.core.records import Activity, ProfileRecord
from edgewise.core.rules import Placement
from edgewise.core.scoring import topk_dot_into, topk_scores_into
from edgewise.core.store import ReadView
from edgewise.core.version_state import VersionCache, VersionState

__all__ = ["FILTERS", "Pipeline", "SnapshotMissing"]

FILTERS: Final = {
    "category": "items whose category path is filter_params['category'] or below it",
    "price": "items priced within filter_params['min'] .. filter_params['max'] (either may be omitted)",
}
SIMILAR_SEEDS_FROM_HISTORY: Final = 1  # without explicit seeds: neighbours of the last viewed item


class SnapshotMissing(RuntimeError):
    """No snapshot is loaded yet: the node must not report SERVING."""


class _Scratch(threading.local):
    """Per-thread buffers reused by every request of the thread (resized when a version needs more)."""

    def __init__(self) -> None:
        self.mask: NDArray[np.uint8] = np.zeros(0, dtype=np.uint8)
        self.idx: NDArray[np.int32] = np.zeros(0, dtype=np.int32)
        self.scores: NDArray[np.float32] = np.zeros(0, dtype=np.float32)
        self.query: NDArray[np.float32] = np.zeros(0, dtype=np.float32)

    def ensure(self, n_items: int, k: int, dim: int) -> None:
        if self.mask.shape[0] != n_items:
            self.mask = np.zeros(n_items, dtype=np.uint8)
        if self.idx.shape[0] < k:
            self.idx = np.zeros(k, dtype=np.int32)
            self.scores = np.zeros(k, dtype=np.float32)
        if self.query.shape[0] != dim:
            self.query = np.zeros(dim, dtype=np.float32)


@dataclass(slots=True)
class _Subject:
    """Who the decision is for, as far as consent lets us know."""

    unit_id: str  # "user:<id>" / "session:<id>" / "" (bucketing unit, for explanations)
    unit: str  # the raw id used for bucketing
    allowed: bool  # personalization purpose granted (request and stored consent)
    profile: ProfileRecord | None
    activity: Activity | None
    known: bool


class Pipeline:
    """Decides requests against read views of one store; safe to share between threads."""

    def __init__(self) -> None:
        self._cache = VersionCache()
        self._scratch = _Scratch()

    def state(self, view: ReadView) -> VersionState:
        if view.generation == 0:
            raise SnapshotMissing("no snapshot loaded")
        return self._cache.get(view)

    def decide(self, view: ReadView, request: DecideInput) -> DecisionOutput:
        state = self.state(view)
        asks = [(ask, *_resolve(state, i, ask)) for i, ask in enumerate(request.placements)]
        subject = _subject(view, request)
        why = Explanation(subject.known, subject.allowed) if request.explain else None
        if why is not None:
            _explain_features(why, request, subject)
        max_k = max((count for _, _, count in asks), default=0)
        self._scratch.ensure(state.n_items, max_k, state.dim)
        outputs = []
        for ask, placement, count in asks:
            pwhy = (
                PlacementExplanation(ask.placement_id, unit_id=subject.unit_id) if why is not None else None
            )
            if placement.strategy == "content":
                out = _content(state, placement, subject, pwhy)
            else:
                out = self._items(view, state, placement, ask, count, subject, request.context.country, pwhy)
            if why is not None and pwhy is not None:
                pwhy.strategy = out.strategy
                why.placements.append(pwhy)
            outputs.append(out)
        return DecisionOutput(view.version, outputs, why)

    # -- item placements ---------------------------------------------------------------------------

    def _items(
        self,
        view: ReadView,
        state: VersionState,
        placement: Placement,
        ask: PlacementAsk,
        count: int,
        subject: _Subject,
        country: str,
        why: PlacementExplanation | None,
    ) -> PlacementOutput:
        out = PlacementOutput(ask.placement_id)
        if why is not None:
            why.rule = f"placement {placement.id} (strategy {placement.strategy})"
        scratch = self._scratch
        mask = scratch.mask
        np.copyto(mask, state.availability(country))
        _apply_filter(state, ask, mask)
        if ask.candidate_ids:
            _keep_only(state, ask.candidate_ids, mask, why)
        _drop(state, ask.exclude_ids, mask)
        viewed = [item for item, _ in subject.activity.views] if subject.activity is not None else []
        if placement.strategy in ("personalized", "similar") and viewed:
            _drop(state, viewed, mask)
            if why is not None:
                why.notes.append(f"excluded {len(viewed)} recently viewed item(s)")

        embeddings = view.array("item_embeddings")
        query: NDArray[np.float32] | None = None
        fallback = Fallback.NONE
        strategy = placement.strategy
        if placement.strategy == "similar":
            seeds = [s for s in ask.seed_item_ids if s in state.rows]
            if not seeds and subject.allowed:
                seeds = viewed[-SIMILAR_SEEDS_FROM_HISTORY:]
            _drop(state, seeds, mask)
            if why is not None:
                why.seed_item_ids = tuple(seeds)
            if seeds and embeddings is not None:
                query = _mean_rows(state, embeddings, seeds, scratch.query)
                strategy = "similar"
            else:
                fallback = _miss_reason(subject) if not seeds else Fallback.MODEL_UNAVAILABLE
        elif placement.strategy == "personalized":
            if not subject.allowed:
                fallback = Fallback.NO_CONSENT
            elif embeddings is None:
                fallback = Fallback.MODEL_UNAVAILABLE
            else:
                query, fallback = _user_query(state, embeddings, subject, scratch.query, why)
                strategy = "embedding"

        if query is not None and embeddings is not None:
            n = topk_dot_into(embeddings, query, mask, count, scratch.idx, scratch.scores)
            reason = strategy
        else:
            popularity = view.array("item_popularity")
            if popularity is None:
                popularity = np.zeros(state.n_items, dtype=np.float32)
                fallback = Fallback.MODEL_UNAVAILABLE
            n = topk_scores_into(popularity, mask, count, scratch.idx, scratch.scores)
            strategy = reason = "popular"
        ids = state.item_ids
        idx, scores = scratch.idx, scratch.scores
        out.items = [ItemOut(ids[idx[j]], float(scores[j]), reason) for j in range(n)]
        out.strategy = strategy
        out.fallback = fallback
        if why is not None:
            why.candidates = int(np.count_nonzero(mask))
        return out


def _resolve(state: VersionState, i: int, ask: PlacementAsk) -> tuple[Placement, int]:
    placement = state.rules.placements.get(ask.placement_id)
    if placement is None:
        known = ", ".join(sorted(state.rules.placements))
        raise RequestError(
            f"placements[{i}].placement_id",
            f"unknown placement {ask.placement_id!r} (this snapshot has: {known})",
        )
    count = ask.count or placement.default_count
    if count > placement.max_count:
        raise RequestError(
            f"placements[{i}].count",
            f"{count} is more than placement {placement.id!r} allows (max_count {placement.max_count})",
        )
    if ask.filter and ask.filter not in FILTERS:
        raise RequestError(
            f"placements[{i}].filter", f"unknown filter {ask.filter!r} (known: {', '.join(FILTERS)})"
        )
    if ask.filter == "category" and not ask.filter_params.get("category"):
        raise RequestError(
            f"placements[{i}].filter_params", "filter 'category' needs filter_params['category']"
        )
    if ask.filter == "price":
        for key in ("min", "max"):
            raw = ask.filter_params.get(key, "")
            try:
                if raw and not np.isfinite(float(raw)):
                    raise ValueError
            except ValueError:
                raise RequestError(
                    f"placements[{i}].filter_params", f"filter 'price': {key} must be a number, got {raw!r}"
                ) from None
    return placement, count


def _subject(view: ReadView, request: DecideInput) -> _Subject:
    unit = request.user_id or request.session_id
    unit_id = f"user:{request.user_id}" if request.user_id else (f"session:{unit}" if unit else "")
    if PERSONALIZATION not in request.consent:
        # The profile and activity are not read at all without the purpose.
        return _Subject(unit_id, unit, False, None, None, False)
    profile = view.profile(request.user_id) if request.user_id else None
    if profile is not None and PERSONALIZATION not in profile.consent:
        return _Subject(unit_id, unit, False, None, None, True)
    activity = view.activity(activity_key(request.user_id, request.session_id)) if unit else None
    return _Subject(unit_id, unit, True, profile, activity, profile is not None)


def _miss_reason(subject: _Subject) -> Fallback:
    if not subject.allowed:
        return Fallback.NO_CONSENT
    return Fallback.COLD_START if subject.known else Fallback.UNKNOWN_USER


def _user_query(
    state: VersionState,
    embeddings: NDArray[np.float32],
    subject: _Subject,
    query: NDArray[np.float32],
    why: PlacementExplanation | None,
) -> tuple[NDArray[np.float32] | None, Fallback]:
    """The user's vector: the profile embedding, else the mean of recently viewed items."""
    profile = subject.profile
    if profile is not None and profile.embedding:
        vector = np.frombuffer(profile.embedding, dtype="<f4")
        if vector.shape[0] != state.dim:
            return None, Fallback.MODEL_UNAVAILABLE
        np.copyto(query, vector)
        if why is not None:
            why.notes.append("user vector: profile embedding")
        return query, Fallback.NONE
    viewed = [item for item, _ in subject.activity.views] if subject.activity is not None else []
    if len(viewed) >= max(1, state.rules.cold_start_min_views):
        _mean_rows(state, embeddings, viewed, query)
        if why is not None:
            why.notes.append(f"user vector: mean of {len(viewed)} recently viewed item(s)")
        return query, Fallback.NONE
    return None, _miss_reason(subject)


def _mean_rows(
    state: VersionState, embeddings: NDArray[np.float32], item_ids: Sequence[str], out: NDArray[np.float32]
) -> NDArray[np.float32]:
    rows = [state.rows[i] for i in item_ids if i in state.rows]
    np.mean(embeddings[rows], axis=0, out=out)
    return out


def _apply_filter(state: VersionState, ask: PlacementAsk, mask: NDArray[np.uint8]) -> None:
    if ask.filter == "category":
        np.bitwise_and(mask, state.category_mask(ask.filter_params["category"]), out=mask)
    elif ask.filter == "price":
        lo = ask.filter_params.get("min", "")
        hi = ask.filter_params.get("max", "")
        if lo:
            mask[state.prices < np.float32(lo)] = 0
        if hi:
            mask[state.prices > np.float32(hi)] = 0


def _rows(state: VersionState, item_ids: Sequence[str]) -> list[int]:
    rows = state.rows
    return [rows[i] for i in item_ids if i in rows]


def _drop(state: VersionState, item_ids: Sequence[str], mask: NDArray[np.uint8]) -> None:
    if item_ids:
        mask[_rows(state, item_ids)] = 0


def _keep_only(
    state: VersionState, item_ids: Sequence[str], mask: NDArray[np.uint8], why: PlacementExplanation | None
) -> None:
    rows = _rows(state, item_ids)
    keep = np.zeros_like(mask)
    keep[rows] = mask[rows]
    np.copyto(mask, keep)
    if why is not None and len(rows) < len(item_ids):
        why.notes.append(f"ignored {len(item_ids) - len(rows)} unknown candidate id(s)")


def _content(
    state: VersionState, placement: Placement, subject: _Subject, why: PlacementExplanation | None
) -> PlacementOutput:
    out = PlacementOutput(placement.id, content_id=placement.default_content, strategy="default")
    if not placement.experiment_id:
        out.strategy = "content"
        return out
    experiment = state.rules.experiments[placement.experiment_id]
    if not subject.allowed:
        out.fallback = Fallback.NO_CONSENT
        return out
    if not subject.unit:
        out.fallback = Fallback.UNKNOWN_USER
        return out
    b = bucket(experiment.salt, subject.unit)
    variant = experiment.variant_for_bucket(b)
    if why is not None:
        why.bucket = b
        why.rule = f"experiment {experiment.id} (salt {experiment.salt!r})"
    if variant is None:
        out.propensity = 1.0 - sum(v.propensity for v in experiment.variants)
        if why is not None:
            why.notes.append("unit is outside the experiment's traffic allocation")
        return out
    out.content_id = variant.content_id
    out.experiment_id = experiment.id
    out.variant_id = variant.id
    out.propensity = variant.propensity
    out.strategy = "experiment"
    return out


def _explain_features(why: Explanation, request: DecideInput, subject: _Subject) -> None:
    ctx = request.context
    for name in ("channel", "device", "country", "page_type"):
        value = getattr(ctx, name)
        if value:
            why.features[f"context.{name}"] = value
    if subject.profile is not None:
        embedding = subject.profile.embedding
        why.features["profile.embedding"] = f"dim {len(embedding) // 4}" if embedding else "absent"
    if subject.activity is not None:
        why.features["activity.views"] = str(len(subject.activity.views))
        why.features["activity.cart"] = str(len(subject.activity.cart))
