"""The decision pipeline: one `DecideRequest` and one read view in, one `DecideResponse` out.

1. Resolve the placements against the snapshot's rules (bad input raises `RequestError`).
2. Consent: without the `personalization` purpose (in the request and, for a known user, in the stored
   consent) the profile and live activity are not read at all, experiments and bandits are skipped,
   and the decision equals the anonymous one for the same context.
3. Global holdout: a unit in it gets every placement's default experience (`FallbackReason.HOLDOUT`).
4. Per placement, the first eligible campaign by priority wins: channel, schedule (UTC start/end, local
   hours and days), audience segments (evaluated at most once per request, through a `FeatureView` that
   enforces per-field consent). It serves fixed content, an experiment's variant, a bandit's arm, or an
   item strategy (see `item_ranking`). No eligible campaign: the placement's default.
5. A personalization miss is never an error: the default experience plus a `FallbackReason` saying why.

`decide` runs the common path as one typed call (core/_decide.pyx `Decider.decide`, over a per-version
`DecidePlan`); `_decide_reference` is the Python reference it is tested against, and what answers
whatever that call leaves (an explanation, an invalid request). `Pipeline(compiled=False)` decides
every request with the reference (benchmarks' A/B).
"""

from __future__ import annotations

from datetime import datetime
from functools import partial

from edgewise.core._decide import Decider
from edgewise.core.activity import ActivityLimits, activity_key, expire, merge_activity
from edgewise.core.decisions import (
    PERSONALIZATION,
    Context,
    DecideRequest,
    DecideResponse,
    Explanation,
    FallbackReason,
    ItemResult,
    PlacementDecision,
    PlacementExplanation,
    PlacementRequest,
    RequestError,
)
from edgewise.core.experiments import assign, in_holdout
from edgewise.core.feature_view import FeatureView
from edgewise.core.features import MISSING
from edgewise.core.item_ranking import Scratch, Shopper, rank_items
from edgewise.core.linear_bandits import LinearBanditPolicy
from edgewise.core.profile_cache import ProfileCache
from edgewise.core.records import Activity, ProfileRecord
from edgewise.core.rules import Campaign, Placement
from edgewise.core.segments import SegmentMemo
from edgewise.core.store import ReadView
from edgewise.core.strategies import Filter, ItemServe, StrategyError, compile_filter
from edgewise.core.version_state import VersionCache, VersionState

__all__ = ["Pipeline", "SnapshotMissing"]


ACTIVITY_LIMITS = ActivityLimits()  # TTLs applied when activity is read


class _NoFeatures:
    """A feature source that knows nothing (for the anonymous fast default)."""

    now_ms = 0
    activity = None

    def get(self, path: tuple[str, ...]) -> object:
        return MISSING

    def item_category(self, item_id: str) -> str | None:
        return None

    def replenish_days(self, item_id: str) -> None:
        return None


_NO_FEATURES = _NoFeatures()
_NOTHING: frozenset[str] = frozenset()  # the purposes granted without consent


class SnapshotMissing(RuntimeError):
    """No snapshot is loaded yet: the node must not report SERVING."""


class Pipeline:
    """Decides requests against read views of one store; safe to share between threads."""

    def __init__(self, compiled: bool = True) -> None:
        self._cache = VersionCache()
        self._scratch = Scratch()
        self._profiles = ProfileCache()
        self.compiled = compiled  # False: every request by `_decide_reference`
        self._decider = Decider(
            self,
            self._scratch,
            self._profiles,
            _consented_inputs,
            _local_time,
            _resolve,
            FeatureView,
            SegmentMemo,
            Shopper,
        )

    def state(self, view: ReadView) -> VersionState:
        if view.generation == 0:
            raise SnapshotMissing("no snapshot loaded")
        return self._cache.get(view)

    def decide(self, view: ReadView, request: DecideRequest) -> DecideResponse:
        if self.compiled:
            state, decided = self._decider.decide_view(view, request, rank_items)
            if decided is not None:
                return decided
        else:
            state = self.state(view)
        return self._decide_reference(view, state, request)

    def _decide_reference(
        self, view: ReadView, state: VersionState, request: DecideRequest
    ) -> DecideResponse:
        asks = [_resolve(state, i, ask) for i, ask in enumerate(request.placements)]
        unit = request.user_id or request.session_id
        profile, activity, allowed = _consented_inputs(
            view, request, self._profiles, state.embedding_generation
        )
        features = FeatureView(  # state, context, now_ms, user_id, profile, activity, granted, record_reads
            state,
            request.context,
            request.now_ms,
            request.user_id if allowed else "",
            profile,
            activity,
            request.consent if allowed else _NOTHING,
            request.explain,
        )
        memo = SegmentMemo(state.rules.segments, features)
        shopper = Shopper(allowed, profile is not None, profile, activity, memo)
        why = Explanation(profile is not None, allowed) if request.explain else None
        holdout = allowed and bool(unit) and in_holdout(state.rules.holdout, unit)
        most = 0
        for _, count, _ in asks:  # a loop, not max() over a generator
            if count > most:
                most = count
        self._scratch.ensure(state.n_items, most, state.dim)
        local = _local_time(request)
        outputs = []
        for ask, (placement, count, request_filter) in zip(request.placements, asks, strict=True):
            pwhy = None
            if why is not None:
                pwhy = PlacementExplanation(ask.placement_id, unit_id=_unit_label(request) if allowed else "")
                why.placements.append(pwhy)
            if holdout:
                out = self._default(
                    view, state, placement, ask, request_filter, count, shopper, request, pwhy
                )
                out.fallback = FallbackReason.HOLDOUT
                if pwhy is not None:
                    pwhy.notes.append("unit is in the global holdout")
            else:
                out = self._placement(
                    view,
                    state,
                    placement,
                    ask,
                    request_filter,
                    count,
                    shopper,
                    memo,
                    request,
                    unit,
                    local,
                    pwhy,
                )
            if pwhy is not None:
                pwhy.strategy = out.strategy
            outputs.append(out)
        if why is not None:
            why.segments = tuple(sorted(memo.matched()))
            _explain_inputs(why, request, profile, activity)
            if features.reads is not None:
                why.features.update(features.reads)
        return DecideResponse(view.version, outputs, why, tuple(sorted(memo.matched())))

    def fast_default(self, view: ReadView, request: DecideRequest, reason: FallbackReason) -> DecideResponse:
        """The default experience of every placement, as cheaply as possible (overload, blown budget).

        Reads nothing about the user: popularity in the request's country, or the default content."""
        state = self.state(view)
        asks = [_resolve(state, i, ask) for i, ask in enumerate(request.placements)]
        outputs = []
        for ask, (placement, count, _) in zip(request.placements, asks, strict=True):
            out = PlacementDecision(placement.id, strategy="default", fallback=reason)
            if placement.kind == "content":
                out.content_id = placement.default_content
            else:
                top: list[ItemResult] = state.derived(
                    ("fast_default", placement.id, request.context.country.upper()),
                    partial(self._popular, view, state, placement, request.context.country),
                )
                excluded = set(ask.exclude_ids)
                out.items = [i for i in top if i.id not in excluded][:count]
                out.strategy = "popular"
            outputs.append(out)
        return DecideResponse(view.version, outputs, None)

    def _popular(
        self, view: ReadView, state: VersionState, placement: Placement, country: str
    ) -> list[ItemResult]:
        request = DecideRequest(
            context=Context(country=country),
            placements=(PlacementRequest(placement.id, placement.max_count),),
        )
        shopper = Shopper(False, False, None, None, SegmentMemo(state.rules.segments, _NO_FEATURES))
        ask = request.placements[0]
        self._scratch.ensure(state.n_items, placement.max_count, state.dim)
        ranked = rank_items(
            view,
            state,
            self._scratch,
            ask=ask,
            count=placement.max_count,
            serve=placement.default_items,
            default=placement.default_items,
            request_filter=None,
            shopper=shopper,
            country=country,
            now_ms=0,
            why=None,
        )
        return ranked.items

    def _placement(
        self,
        view: ReadView,
        state: VersionState,
        placement: Placement,
        ask: PlacementRequest,
        request_filter: Filter | None,
        count: int,
        shopper: Shopper,
        memo: SegmentMemo,
        request: DecideRequest,
        unit: str,
        local: datetime | None,
        why: PlacementExplanation | None,
    ) -> PlacementDecision:
        skipped = FallbackReason.NONE
        for campaign in placement.campaigns:
            if not _eligible(campaign, request, memo, local):
                continue
            if (campaign.experiment_id or campaign.bandit_id) and not (shopper.allowed and unit):
                if why is not None:
                    why.notes.append(
                        f"campaign {campaign.id}: skipped (needs consent and a user or session id)"
                    )
                if skipped == FallbackReason.NONE:
                    skipped = (
                        FallbackReason.NO_CONSENT if not shopper.allowed else FallbackReason.UNKNOWN_USER
                    )
                continue
            out = PlacementDecision(placement.id, campaign=campaign.id)
            if why is not None:
                why.campaign = campaign.id
                why.rule = f"campaign {campaign.id} (priority {campaign.priority})"
            if campaign.experiment_id:
                experiment = state.rules.experiments[campaign.experiment_id]
                assignment = assign(experiment, unit, request.context.attributes)
                if why is not None and assignment is not None:
                    why.bucket = max(assignment.bucket, 0)
                if assignment is None or assignment.variant is None:
                    if why is not None:
                        why.notes.append(f"campaign {campaign.id}: unit outside experiment {experiment.id}")
                    continue
                variant = assignment.variant
                out.experiment_id, out.variant_id, out.propensity = (
                    experiment.id,
                    variant.id,
                    variant.propensity,
                )
                if assignment.forced:
                    out.propensity = 1.0
                    if why is not None:
                        why.notes.append(f"variant forced by context attribute for QA ({variant.id})")
                if why is not None:
                    why.experiment_id, why.variant_id = experiment.id, variant.id
                if placement.kind == "content":
                    out.content_id = variant.content_id
                    out.strategy = "experiment"
                    return out
                serve = state.rules.variant_items[(experiment.id, variant.id)]
                return self._serve_items(
                    view, state, placement, ask, request_filter, count, serve, shopper, request, why, out
                )
            if campaign.bandit_id:
                policy = state.rules.bandits[campaign.bandit_id]
                if isinstance(policy, LinearBanditPolicy):
                    return _linear_arm(
                        state, campaign.bandit_id, policy, memo, local, self._scratch, out, why
                    )
                segment = next((s for s in sorted(policy.segments) if memo.matches(s)), None)
                arm, propensity = policy.choose(self._scratch.rng, segment)
                out.content_id = state.rules.bandit_contents[(campaign.bandit_id, arm.id)]
                out.experiment_id, out.variant_id, out.propensity = campaign.bandit_id, arm.id, propensity
                out.strategy = "bandit"
                out.bandit_segment = segment or ""
                if why is not None:
                    why.experiment_id, why.variant_id = campaign.bandit_id, arm.id
                    why.notes.append(
                        f"bandit {campaign.bandit_id}: posteriors of segment {segment or '(global)'}"
                    )
                return out
            if campaign.content_id:
                out.content_id = campaign.content_id
                out.strategy = "content"
                return out
            assert campaign.items is not None
            return self._serve_items(
                view, state, placement, ask, request_filter, count, campaign.items, shopper, request, why, out
            )
        out = self._default(view, state, placement, ask, request_filter, count, shopper, request, why)
        out.fallback = skipped
        if why is not None:
            why.rule = "placement default"
        return out

    def _serve_items(
        self,
        view: ReadView,
        state: VersionState,
        placement: Placement,
        ask: PlacementRequest,
        request_filter: Filter | None,
        count: int,
        serve: ItemServe,
        shopper: Shopper,
        request: DecideRequest,
        why: PlacementExplanation | None,
        out: PlacementDecision,
    ) -> PlacementDecision:
        ranked = rank_items(
            view,
            state,
            self._scratch,
            ask=ask,
            count=count,
            serve=serve,
            default=placement.default_items,
            request_filter=request_filter,
            shopper=shopper,
            country=request.context.country,
            now_ms=request.now_ms,
            why=why,
        )
        out.items, out.strategy, out.fallback = ranked.items, ranked.strategy, ranked.fallback
        return out

    def _default(
        self,
        view: ReadView,
        state: VersionState,
        placement: Placement,
        ask: PlacementRequest,
        request_filter: Filter | None,
        count: int,
        shopper: Shopper,
        request: DecideRequest,
        why: PlacementExplanation | None,
    ) -> PlacementDecision:
        out = PlacementDecision(placement.id, strategy="default")
        if placement.kind == "content":
            out.content_id = placement.default_content
            return out
        ranked = rank_items(
            view,
            state,
            self._scratch,
            ask=ask,
            count=count,
            serve=placement.default_items,
            default=placement.default_items,
            request_filter=request_filter,
            shopper=shopper,
            country=request.context.country,
            now_ms=request.now_ms,
            why=why,
        )
        out.items, out.strategy = ranked.items, ranked.strategy
        return out


def _consented_inputs(
    view: ReadView, request: DecideRequest, profiles: ProfileCache | None = None, generation: int = 0
) -> tuple[ProfileRecord | None, Activity | None, bool]:
    """(profile, activity, allowed): nothing about the user is read without the purpose. `profiles`:
    decoded profiles kept between requests (None: decode the stored record); `generation`: the version's
    embedding generation, whose vector the profile's `embedding` is (core/embedding_slots.py)."""
    if PERSONALIZATION not in request.consent:
        return None, None, False
    user_id = request.user_id
    if not user_id:
        profile = None
    elif profiles is not None:
        profile = profiles.profile(view, user_id, generation)
    else:
        profile = view.profile(user_id, generation)
    if profile is not None and PERSONALIZATION not in profile.consent:
        return None, None, False
    unit = request.user_id or request.session_id
    activity = view.activity(activity_key(request.user_id, request.session_id)) if unit else None
    if profile is not None and profile.activity is not None:
        activity = merge_activity(activity, profile.activity, ACTIVITY_LIMITS)
    if activity is not None and request.now_ms:
        activity = expire(activity, request.now_ms, ACTIVITY_LIMITS)
    return profile, activity, True


def _explain_inputs(
    why: Explanation, request: DecideRequest, profile: ProfileRecord | None, activity: Activity | None
) -> None:
    ctx = request.context
    for name in ("channel", "device", "country", "page_type", "local_time"):
        value = getattr(ctx, name)
        if value:
            why.features[f"context.{name}"] = value
    if profile is not None:
        embedding = profile.embedding
        why.features["profile.embedding"] = f"dim {len(embedding) // 4}" if embedding else "absent"
    if activity is not None:
        why.features["activity.views"] = str(len(activity.views))
        why.features["activity.cart"] = str(len(activity.cart))


def _eligible(campaign: Campaign, request: DecideRequest, memo: SegmentMemo, local: datetime | None) -> bool:
    if campaign.channels and request.context.channel not in campaign.channels:
        return False
    if campaign.schedule is not None and not campaign.schedule.active(request.now_ms, local):
        return False
    for segment in campaign.audience:  # plain loops: no generator per call on the hot path
        if not memo.matches(segment):
            return False
    for segment in campaign.exclude:  # noqa: SIM110 (a loop, not all(): no generator per call)
        if memo.matches(segment):
            return False
    return True


def _linear_arm(
    state: VersionState,
    bandit_id: str,
    policy: LinearBanditPolicy,
    memo: SegmentMemo,
    local: datetime | None,
    scratch: Scratch,
    out: PlacementDecision,
    why: PlacementExplanation | None,
) -> PlacementDecision:
    """A contextual bandit's arm for this request (`core/linear_bandits`): its feature vector, the arm
    and the exact propensity; the vector goes into the exposure record, for learning."""
    x = policy.vector(memo.source, memo, local)
    arm, propensity = policy.choose(scratch.rng, x)
    out.content_id = state.rules.bandit_contents[(bandit_id, arm.id)]
    out.experiment_id, out.variant_id, out.propensity = bandit_id, arm.id, propensity
    out.strategy = "bandit"
    out.context_vector = tuple(x)
    if why is not None:
        why.experiment_id, why.variant_id = bandit_id, arm.id
        on = [name for name, v in zip(policy.feature_names(), out.context_vector, strict=True) if v][1:]
        why.notes.append(f"bandit {bandit_id}: linear model on {', '.join(on) or 'the intercept only'}")
    return out


def _local_time(request: DecideRequest) -> datetime | None:
    """The request's local time (context.local_time), else UTC decision time."""
    if request.context.local_time:
        try:
            return datetime.fromisoformat(request.context.local_time.replace("Z", "+00:00"))
        except ValueError:
            pass
    return datetime.utcfromtimestamp(request.now_ms / 1000) if request.now_ms else None


def _unit_label(request: DecideRequest) -> str:
    if request.user_id:
        return f"user:{request.user_id}"
    return f"session:{request.session_id}" if request.session_id else ""


def _resolve(state: VersionState, i: int, ask: PlacementRequest) -> tuple[Placement, int, Filter | None]:
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
    request_filter = None
    if ask.filter:
        try:
            request_filter = compile_filter(ask.filter, dict(ask.filter_params), f"placements[{i}].filter")
        except StrategyError as exc:
            field = f"placements[{i}].filter_params" if "params" in exc.path else f"placements[{i}].filter"
            raise RequestError(field, exc.reason) from None
    return placement, count, request_filter
