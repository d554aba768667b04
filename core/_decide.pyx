# cython: language_level=3, auto_pickle=False
"""`Pipeline.decide`'s per-request orchestration as one typed call: `Decider.decide`, the common path.

`Pipeline._decide_reference` (core/pipeline.py) is the reference: placements resolved, the consent gate,
the feature view, segment memo and shopper, the global holdout, then per placement the campaign walk
(`_eligible`: channels, schedule, audience and excluded segments), experiment assignment and the
`PlacementDecision`, a few hundred interpreter steps per request. Here the same steps run over a
`DecidePlan`, made once per snapshot version (`VersionState.derived`): per placement its counts, default
experience and campaigns as typed records (segment ids, channels, the experiment's salts and layer
range, the variants' item strategies), so the walk is C loops over those records:

- the placements resolved by a dict lookup in the plan (an unknown placement, a count over the maximum,
  an explanation asked for: `decide` returns None before anything is read, and the reference answers);
- the consent gate through the reference's own `_consented_inputs` (the profile cache, the activity
  merge and expiry are Python either way: one call);
- segments evaluated through the request's `SegmentMemo` dict itself (its predicate called at most
  once, the result stored where `SegmentMemo.matches` would store it), so memo, explanation-free
  `segments` of the response and any Python path that follows see the same results;
- an experiment's unit assigned with the compiled MurmurHash3 (`_hashing.salted_bucket`), layer range
  first, and its `Assignment` read from the experiment's per-bucket table (built here for a bucket not
  yet in it, as `assign` builds it); a forced variant (QA attribute) or GrowthBook bucketing calls
  `experiments.assign`;
- the local time (`_local_time`, a datetime) computed only when a schedule or a Python path needs it;
- the request's `FeatureView`, `SegmentMemo` and `Shopper`, its `PlacementDecision`s and the
  `DecideResponse` made with their slots filled (`_Maker`; layouts checked when the `Decider` is made);
- items ranked by `rank_items`'s common path without its frame (base mask, the thread's `Placer`,
  `_placement.place`; `rank_items_reference` for what `place` leaves), or by the `rank` the caller
  passes when it is another function.

What this does not cover goes to the reference's own methods, per placement, with the same inputs:
a placement with a bandit campaign or a request filter (`Pipeline._placement`), a unit in the global
holdout (`Pipeline._default`). tests/test_decide_compiled.py compares whole decisions of both paths on
generated rules, requests, profiles and activity.
"""

from cpython.dict cimport PyDict_GetItem
from cpython.ref cimport PyObject

from edgewise.core._hashing cimport salted_bucket
from edgewise.core._slots cimport allocate, put_slot, slot_offset

from edgewise.core._results import filled
from edgewise.core.decisions import DecideResponse, FallbackReason, PlacementDecision
from edgewise.core.experiments import FORCE_ATTRIBUTE_PREFIX as _FORCE_PREFIX
from edgewise.core.experiments import Assignment, assign
from edgewise.core import item_ranking as _item_ranking
from edgewise.core._placement import Placer, place

cdef object _NONE = FallbackReason.NONE
cdef object _NO_CONSENT = FallbackReason.NO_CONSENT
cdef object _UNKNOWN_USER = FallbackReason.UNKNOWN_USER
cdef object _HOLDOUT = FallbackReason.HOLDOUT
cdef object _ASSIGN = assign
cdef object _ASSIGNMENT = Assignment
cdef object _RANK_ITEMS = _item_ranking.rank_items
cdef object _RANK_REFERENCE = _item_ranking.rank_items_reference
cdef object _BASE_MASK = _item_ranking._base_mask
cdef object _SCORED = _item_ranking._scored
cdef object _PLACER = Placer
cdef object _PLACE = place
cdef object _DECISION = PlacementDecision
cdef object _RESPONSE = DecideResponse
cdef frozenset _NOTHING = frozenset()
cdef tuple _PLAN_KEY = ("decide_plan",)  # its key in VersionState.derived



cdef enum:
    _MAX_SLOTS = 12


cdef class _Maker:
    """Instances of a plain `__slots__` class (no base but `object`, no `__dict__`) made with every
    slot filled directly, as its `__init__` would fill them: the request's `FeatureView`, `SegmentMemo`
    and `Shopper`, its `PlacementDecision`s and `DecideResponse` (one Python `__init__` frame each
    saved; `_results.filled` does the same for any slots dataclass, through a Python call). A class
    whose slots are not exactly `names` (for a dataclass: its fields, in order, all set by `__init__`,
    no `__post_init__`) is refused when the `Decider` is made, not on a request."""
    cdef object cls
    cdef Py_ssize_t n
    cdef Py_ssize_t at[_MAX_SLOTS]

    def __init__(self, cls, tuple names):
        import dataclasses

        ok = cls.__mro__ == (cls, object) and sorted(cls.__slots__) == sorted(names)
        if ok and dataclasses.is_dataclass(cls):
            fields = dataclasses.fields(cls)
            ok = (
                tuple(f.name for f in fields) == names
                and all(f.init for f in fields)
                and not hasattr(cls, "__post_init__")
            )
        if not ok or len(names) > _MAX_SLOTS:
            raise TypeError(f"{cls.__name__}: expected a __slots__ class of exactly {names}")
        self.cls = cls
        self.n = len(names)
        for i, name in enumerate(names):
            self.at[i] = slot_offset(cls, name)

    cdef object make(self, tuple values):
        cdef Py_ssize_t i
        obj = allocate(self.cls)
        for i in range(self.n):
            put_slot(obj, self.at[i], values[i])
        return obj


# The slots of the request's feature view and segment memo, in the order `Decider.decide` gives them.
_FEATURE_VIEW_SLOTS = ("_state", "_context", "_now_ms", "_user_id", "_profile", "_activity", "_granted", "reads")
_MEMO_SLOTS = ("_segments", "_source", "_results")
_SHOPPER_FIELDS = ("allowed", "known", "profile", "activity", "memo", "_viewed_rows", "_viewed_list")
_DECISION_FIELDS = (
    "placement_id", "items", "content_id", "experiment_id", "variant_id", "propensity", "strategy",
    "fallback", "campaign", "bandit_segment", "context_vector",
)
_RESPONSE_FIELDS = ("snapshot_version", "placements", "explanation", "segments", "decision_id")


cdef enum:
    _CONTENT = 0
    _EXPERIMENT = 1
    _ITEMS = 2
    _BANDIT = 3


cdef class _Campaign:
    """One campaign of a placement, as the walk reads it."""
    cdef str id
    cdef int kind
    cdef object channels  # frozenset, None: every channel
    cdef object schedule  # rules.Schedule or None
    cdef tuple audience
    cdef tuple exclude
    cdef str content_id
    cdef object items  # ItemServe
    # experiments
    cdef object experiment
    cdef str experiment_id
    cdef object layer_salt  # str or None
    cdef int layer_start, layer_end
    cdef str salt
    cdef list by_bucket  # Experiment._by_bucket: the Assignment of each bucket, filled on first use
    cdef int traffic
    cdef tuple variants  # of (bucket_start, bucket_end, Variant)
    cdef bint simple  # murmur3 bucketing (no GrowthBook)
    cdef str force_key  # context attribute that forces a variant ("" when not allowed)
    cdef dict variant_items  # variant id -> ItemServe (item placements)

    def __init__(self, campaign, rules, bint content):
        self.id = campaign.id
        self.channels = campaign.channels if campaign.channels else None
        self.schedule = campaign.schedule
        self.audience = tuple(campaign.audience)
        self.exclude = tuple(campaign.exclude)
        self.content_id = campaign.content_id
        self.items = campaign.items
        self.experiment_id = campaign.experiment_id
        self.force_key = ""
        self.variant_items = {}
        if campaign.experiment_id:
            self.kind = _EXPERIMENT
            experiment = rules.experiments[campaign.experiment_id]
            self.experiment = experiment
            layer = experiment.layer
            self.layer_salt = None if layer is None else layer.salt
            self.layer_start, self.layer_end = experiment.layer_range
            self.salt = experiment.salt
            self.by_bucket = experiment._by_bucket
            self.simple = experiment.growthbook is None
            self.traffic = experiment.traffic
            self.variants = tuple((v.bucket_start, v.bucket_end, v) for v in experiment.variants)
            if experiment.allow_forced:
                self.force_key = _FORCE_PREFIX + experiment.id
            if not content:
                for variant in experiment.variants:
                    key = (experiment.id, variant.id)
                    if key in rules.variant_items:
                        self.variant_items[variant.id] = rules.variant_items[key]
        elif campaign.bandit_id:
            self.kind = _BANDIT
        elif campaign.content_id:
            self.kind = _CONTENT
        else:
            self.kind = _ITEMS


cdef class _Placement:
    """One placement of the rules, as the request path reads it."""
    cdef object placement  # rules.Placement
    cdef str id
    cdef bint content
    cdef Py_ssize_t default_count, max_count
    cdef str default_content
    cdef object default_items
    cdef tuple campaigns  # of _Campaign, by priority
    cdef bint python  # a bandit campaign: the reference's `_placement` serves it

    def __init__(self, placement, rules):
        self.placement = placement
        self.id = placement.id
        self.content = placement.kind == "content"
        self.default_count = placement.default_count
        self.max_count = placement.max_count
        self.default_content = placement.default_content
        self.default_items = placement.default_items
        self.campaigns = tuple(_Campaign(c, rules, self.content) for c in placement.campaigns)
        self.python = any((<_Campaign>c).kind == _BANDIT for c in self.campaigns)


cdef class DecidePlan:
    """What `Decider.decide` reads of one snapshot version's rules, made once per version."""
    cdef dict placements  # placement id -> _Placement
    cdef object holdout_salt  # str or None: no holdout (or an empty one)
    cdef int holdout_buckets
    cdef object segments  # SegmentSet
    cdef dict predicates  # segment id -> compiled condition
    cdef Py_ssize_t n_items, dim

    def __init__(self, state):
        rules = state.rules
        self.placements = {pid: _Placement(p, rules) for pid, p in rules.placements.items()}
        holdout = rules.holdout
        self.holdout_salt = holdout.salt if holdout is not None and holdout.buckets > 0 else None
        self.holdout_buckets = holdout.buckets if holdout is not None else 0
        self.segments = rules.segments
        self.predicates = rules.segments._predicates
        self.n_items = state.n_items
        self.dim = state.dim


cdef class Decider:
    """The compiled `decide` of one `Pipeline`: its scratch, profile cache and the reference's functions
    it shares (`consented_inputs`, `local_time`, `resolve` and the feature classes), bound once."""
    cdef object pipeline
    cdef object scratch
    cdef object profiles
    cdef object consented
    cdef object local_time
    cdef object resolve
    cdef _Maker feature_view
    cdef _Maker memo
    cdef _Maker shopper
    cdef _Maker decision
    cdef _Maker response
    cdef object versions  # the pipeline's VersionCache
    cdef tuple last  # (state, plan): the plan of the version the last request read

    def __init__(
        self, pipeline, scratch, profiles, consented, local_time, resolve, feature_view, memo_class,
        shopper_class,
    ):
        self.pipeline = pipeline
        self.scratch = scratch
        self.profiles = profiles
        self.consented = consented
        self.local_time = local_time
        self.resolve = resolve
        self.feature_view = _Maker(feature_view, _FEATURE_VIEW_SLOTS)
        self.memo = _Maker(memo_class, _MEMO_SLOTS)
        self.shopper = _Maker(shopper_class, _SHOPPER_FIELDS)
        self.decision = _Maker(_DECISION, _DECISION_FIELDS)
        self.response = _Maker(_RESPONSE, _RESPONSE_FIELDS)
        self.versions = pipeline._cache if pipeline is not None else None
        self.last = (None, None)

    def plan(self, state):
        """The version's `DecidePlan` (`state.derived`), kept for the next request of the version."""
        last = self.last
        if last[0] is state:
            return last[1]
        plan = state.derived(_PLAN_KEY, lambda: DecidePlan(state))
        self.last = (state, plan)
        return plan

    def decide_view(self, view, request, rank):
        """(state, `decide(view, state, plan, request, rank)`): the version's state as `Pipeline.state`
        gives it (read from the pipeline's cache while the view's generation is the cached one; else
        `Pipeline.state` builds it, or raises SnapshotMissing) and its plan."""
        state = self.versions._state
        if state is None or state.generation != view.generation:
            state = self.pipeline.state(view)
        return state, self._decide(view, state, self.plan(state), request, rank)

    def decide(self, view, state, DecidePlan plan not None, request, rank):
        """`Pipeline._decide_reference(view, state, request)`, or None (before anything is read): an
        explanation asked for, an unknown placement or a count over the maximum (the reference raises
        the `RequestError`). `rank`: `rank_items`."""
        return self._decide(view, state, plan, request, rank)

    cdef object _decide(self, view, state, DecidePlan plan, request, rank):
        if request.explain:
            return None
        placements = request.placements
        cdef tuple asks = placements if type(placements) is tuple else tuple(placements)
        cdef Py_ssize_t n = len(asks), i, count, most = 0
        cdef list places = [None] * n
        cdef list counts = [None] * n
        cdef list filters = None
        cdef _Placement pp
        cdef PyObject* found
        for i in range(n):
            ask = asks[i]
            found = PyDict_GetItem(plan.placements, ask.placement_id)
            if found is NULL:
                return None
            pp = <_Placement>found
            wanted = ask.count or pp.default_count
            if wanted > pp.max_count:  # compared as Python ints: a count of any size is the reference's error
                return None
            count = wanted
            if ask.filter:
                if filters is None:
                    filters = [None] * n
                filters[i] = self.resolve(state, i, ask)[2]  # raises the reference's RequestError
            places[i] = pp
            counts[i] = count
            if count > most:
                most = count
        user_id = request.user_id
        unit = user_id or request.session_id
        profile, activity, allowed_obj = self.consented(  # the profile's vector of the version's generation
            view, request, self.profiles, state.embedding_generation
        )
        cdef bint allowed = allowed_obj
        context = request.context
        features = self.feature_view.make(  # FeatureView(state, context, ..., record_reads=False)
            (
                state,
                context,
                request.now_ms,
                user_id if allowed else "",
                profile,
                activity,
                request.consent if allowed else _NOTHING,
                None,
            )
        )
        cdef dict results = {}
        memo = self.memo.make((plan.segments, features, results))  # SegmentMemo(segments, features)
        shopper = self.shopper.make(  # Shopper(allowed, known, profile, activity, memo)
            (allowed, profile is not None, profile, activity, memo, None, None)
        )
        cdef bint holdout = (
            allowed and bool(unit) and plan.holdout_salt is not None
            and salted_bucket(plan.holdout_salt, unit) < plan.holdout_buckets
        )
        self.scratch.ensure(plan.n_items, most, plan.dim)
        cdef list outputs = [None] * n
        cdef _Walk walk = _Walk.__new__(_Walk)
        walk.d = self
        walk.view = view
        walk.state = state
        walk.plan = plan
        walk.request = request
        walk.rank = rank
        walk.shopper = shopper
        walk.memo = memo
        walk.features = features
        walk.results = results
        walk.unit = unit
        walk.allowed = allowed
        walk.channel = context.channel
        walk.now_ms = request.now_ms
        walk.has_local = False
        walk.local = None
        walk.country = context.country
        walk.available = None
        walk.direct = rank is _RANK_ITEMS
        for i in range(n):
            pp = <_Placement>places[i]
            ask = asks[i]
            request_filter = None if filters is None else filters[i]
            if holdout:
                out = self.pipeline._default(
                    view, state, pp.placement, ask, request_filter, counts[i], shopper, request, None
                )
                out.fallback = _HOLDOUT
            elif pp.python or request_filter is not None:
                out = self.pipeline._placement(
                    view, state, pp.placement, ask, request_filter, counts[i], shopper, memo, request,
                    unit, walk.local_time(), None,
                )
            else:
                out = walk.placement(pp, ask, counts[i])
            outputs[i] = out
        matched = sorted([sid for sid, result in results.items() if result])
        return self.response.make((view.version, outputs, None, tuple(matched), ""))


cdef class _Walk:
    """One request's inputs, for the campaign walk of each of its placements."""
    cdef Decider d
    cdef object view, state, request, rank, shopper, memo, features, unit, channel, now_ms, local
    cdef object country, available  # the request's country; its availability mask (None: not yet read)
    cdef DecidePlan plan
    cdef dict results
    cdef bint allowed, has_local, direct

    cdef object local_time(self):
        if not self.has_local:
            self.local = self.d.local_time(self.request)
            self.has_local = True
        return self.local

    cdef bint matches(self, str segment_id) except -1:
        """`SegmentMemo.matches`: the memo's own results dict, each predicate called at most once."""
        cdef PyObject* found = PyDict_GetItem(self.results, segment_id)
        if found is not NULL and <object>found is not None:
            return bool(<object>found)
        found = PyDict_GetItem(self.plan.predicates, segment_id)
        if found is NULL:
            return bool(self.memo.matches(segment_id))  # raises the memo's KeyError
        result = (<object>found)(self.features)
        self.results[segment_id] = result
        return bool(result)

    cdef bint eligible(self, _Campaign c) except -1:
        if c.channels is not None and self.channel not in c.channels:
            return False
        if c.schedule is not None and not c.schedule.active(self.now_ms, self.local_time()):
            return False
        for segment_id in c.audience:
            if not self.matches(segment_id):
                return False
        for segment_id in c.exclude:
            if self.matches(segment_id):
                return False
        return True

    cdef object assignment(self, _Campaign c):
        """`experiments.assign(c.experiment, unit, attributes)`."""
        cdef int b
        cdef PyObject* cached
        if c.force_key:
            forced = self.request.context.attributes.get(c.force_key)
            if forced:
                return _assign(c.experiment, self.unit, self.request.context.attributes)
        if not c.simple:
            return _assign(c.experiment, self.unit, self.request.context.attributes)
        if c.layer_salt is not None:
            b = salted_bucket(c.layer_salt, self.unit)
            if b < c.layer_start or b >= c.layer_end:
                return None
        b = salted_bucket(c.salt, self.unit)
        assignment = c.by_bucket[b]
        if assignment is None:  # first unit of this bucket: `Assignment(experiment, variant_at(b), b)`
            variant = None
            if b < c.traffic:
                for start, end, v in c.variants:
                    if <int>start <= b < <int>end:
                        variant = v
                        break
            assignment = filled(_ASSIGNMENT, (c.experiment, variant, b, False))
            c.by_bucket[b] = assignment
        return assignment

    cdef object placement(self, _Placement pp, ask, Py_ssize_t count):
        """`Pipeline._placement` without explanation, for a placement without bandits or request filter."""
        skipped = _NONE
        cdef _Campaign c
        for c in pp.campaigns:
            if not self.eligible(c):
                continue
            if c.kind == _EXPERIMENT and not (self.allowed and self.unit):
                if skipped is _NONE:
                    skipped = _NO_CONSENT if not self.allowed else _UNKNOWN_USER
                continue
            if c.kind == _EXPERIMENT:
                assignment = self.assignment(c)
                if assignment is None:
                    continue
                variant = assignment.variant
                if variant is None:
                    continue
                experiment = assignment.experiment
                out = _decision(self.d.decision, pp.id, c.id)
                out.experiment_id = experiment.id
                out.variant_id = variant.id
                out.propensity = 1.0 if assignment.forced else variant.propensity
                if pp.content:
                    out.content_id = variant.content_id
                    out.strategy = "experiment"
                    return out
                serve = c.variant_items.get(variant.id)
                if serve is None:  # the reference's lookup (and its KeyError)
                    serve = self.state.rules.variant_items[(experiment.id, variant.id)]
                return self.items(pp, ask, count, serve, out)
            out = _decision(self.d.decision, pp.id, c.id)
            if c.kind == _CONTENT:
                out.content_id = c.content_id
                out.strategy = "content"
                return out
            return self.items(pp, ask, count, c.items, out)
        out = _decision(self.d.decision, pp.id, "")
        out.strategy = "default"
        if pp.content:
            out.content_id = pp.default_content
        else:
            ranked = self._rank(ask, count, pp.default_items, pp.default_items)
            if type(ranked) is tuple:
                out.items, out.strategy = (<tuple>ranked)[0], (<tuple>ranked)[1]
            else:
                out.items = ranked.items
                out.strategy = ranked.strategy
        out.fallback = skipped
        return out

    cdef object items(self, _Placement pp, ask, Py_ssize_t count, serve, out):
        ranked = self._rank(ask, count, serve, pp.default_items)
        if type(ranked) is tuple:
            out.items, out.strategy, out.fallback = <tuple>ranked
        else:
            out.items = ranked.items
            out.strategy = ranked.strategy
            out.fallback = ranked.fallback
        return out

    cdef object _rank(self, ask, Py_ssize_t count, serve, default):
        """`rank(...)`'s `Ranked`, or its (items, strategy, fallback): when `rank` is `rank_items`, its
        common path is taken here, without its frame: the base mask (the country's availability, read
        once per request, when the strategy has no filters), the thread's `Placer` and `place`; what
        `place` leaves goes to `rank_items_reference`, as in `rank_items`."""
        if self.direct:
            if not serve.filters:
                base = self.available
                if base is None:
                    base = self.available = self.state.availability(self.country)
            else:
                base = _BASE_MASK(self.state, self.country, serve.filters)
            if base is not None:
                scratch = self.d.scratch
                placer = scratch.placer
                if placer is None or (<object>placer).state is not self.state:
                    placer = scratch.placer = _PLACER(self.state, scratch)
                placed = _PLACE(
                    placer, self.view, base, ask, count, serve, default, self.shopper, self.country,
                    self.now_ms, _SCORED,
                )
                if placed is not None:
                    return placed
        rank = _RANK_REFERENCE if self.direct else self.rank  # what `place` left, or the caller's `rank`
        return rank(
            self.view,
            self.state,
            self.d.scratch,
            ask=ask,
            count=count,
            serve=serve,
            default=default,
            request_filter=None,
            shopper=self.shopper,
            country=self.country,
            now_ms=self.now_ms,
            why=None,
        )


cdef inline object _decision(_Maker decision, str placement_id, str campaign_id):
    """`PlacementDecision(placement_id, campaign=campaign_id)`."""
    return decision.make((placement_id, [], "", "", "", 1.0, "", _NONE, campaign_id, "", ()))


cdef inline object _assign(experiment, unit, attributes):
    return _ASSIGN(experiment, unit, attributes)
