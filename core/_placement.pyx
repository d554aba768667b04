# cython: language_level=3, auto_pickle=False
"""One item placement ranked by one typed call: `place`, the common path of `item_ranking.rank_items`.

`rank_items` (core/item_ranking.py) is the reference: the candidate mask built with NumPy, the strategy
chosen, a kernel entry point of `edgewise.core.scoring` called, the results post-processed, a few dozen
Python steps and 5-10 NumPy calls per placement, each with a typed memoryview set up per array argument.
`place` does the same work for the placements every Decide has, in C over views set up once:

- a `Placer` holds one thread's typed views of one version's arrays (embeddings, their int8 and
  half-precision blocks, the neighbor lists) and of the thread's scratch buffers, made when the version or the
  buffers change, not per call; base masks and score vectors are looked up by the array's identity
  (the version's own arrays: the same objects on every call) and their views kept with them;
- the mask: the base copied (the country's availability narrowed by the strategy's filters that
  depend on the version alone, made once per version by the caller), then the request's candidates, its excluded ids, the
  viewed and bought rows cleared (row lookups in the version's id -> row dict);
- the strategy: personalized (the profile's vector, or the mean of the viewed items' vectors),
  similar (the seeds' neighbor lists, filled up by the mean of their vectors), popular and trending
  (the scores and order of `item_ranking`'s cached derivations, through the `scored` callback), and
  the placement's default where those find nothing, with the same fallback reasons;
- the kernels of `edgewise.core._scoring` called directly, `nogil`, on those views;
- rotation (rows shown too often without a click sink, stable), then the `ItemResult`s made in C.

A partitioned catalog (core/partition.py) is scanned by its kernel, as the reference does. What the
call does not cover returns None before anything but the thread's scratch is written, and the caller
ranks in Python: an explanation asked for (so explain output is the reference's, unchanged), a
request's own filter, a filter on the shopper's history, boosts, promotions, diversity, the cart and
replenish strategies, model arrays only in the store (no version copy), a fetch larger than the
scratch buffers, an input the reference would reject. tests/test_placement_compiled.py compares both
paths on generated versions and requests; `mean_rows` is tested against NumPy's `mean(axis=0)`, bit
for bit.
"""

import sys

from cpython.dict cimport PyDict_GetItem
from cpython.ref cimport PyObject
from libc.stdint cimport int32_t, uint8_t, uint16_t
from libc.string cimport memcpy, memset

from edgewise.core._scoring cimport (
    neighbor_candidates_kernel,
    topk_dot_kernel,
    topk_half_kernel,
    topk_int8_kernel,
    topk_partition_int8_kernel,
    topk_partition_kernel,
    topk_pairs_kernel,
    topk_scores_kernel,
    topk_sorted_kernel,
)

from edgewise.core._results import item_results
from edgewise.core.decisions import FallbackReason, ItemResult

cdef object _NONE = FallbackReason.NONE
cdef object _NO_CONSENT = FallbackReason.NO_CONSENT
cdef object _UNKNOWN_USER = FallbackReason.UNKNOWN_USER
cdef object _COLD_START = FallbackReason.COLD_START
cdef object _MODEL_UNAVAILABLE = FallbackReason.MODEL_UNAVAILABLE
cdef object _ITEM_RESULT = ItemResult
cdef bint _LITTLE = sys.byteorder == "little"  # profile vectors are float32 little-endian
# The personalized scan of a version with both copies: the int8 one (default) or the half-precision one
# (set_scan; benchmarks' A/B). Both return the float32 top k: the choice is speed, never results.
cdef bint _use_int8 = True


def set_scan(str name):
    """Choose the personalized scan for this process: "int8" or "half"; returns the previous choice.
    A version state has the half-precision copy only when built after "half" was chosen (or when it
    cannot have the int8 one): choose before the states are built."""
    global _use_int8
    if name not in ("int8", "half"):
        raise ValueError(f"scan must be 'int8' or 'half', got {name!r}")
    previous = "int8" if _use_int8 else "half"
    _use_int8 = name == "int8"
    return previous


def scan():
    """The personalized scan this process uses where a version has both copies: "int8" or "half"."""
    return "int8" if _use_int8 else "half"

cdef enum:
    _SORTED_WALK = 2048  # item_ranking._SORTED_WALK: entries of an order walked before a full scan
    # Arrays whose views a Placer keeps (the version's masks, score vectors and orders); when full, it
    # starts again: it holds these arrays alive, and the derived cache must stay the one that bounds
    # how many score vectors are kept.
    _VIEWS_KEPT = 32


cdef class _Mask:
    cdef object array
    cdef const uint8_t[::1] v


cdef class _Vec:
    cdef object array
    cdef const float[::1] v


cdef class _Order:
    cdef object array
    cdef const int32_t[::1] v


cdef bint _int8_fits(object small, Py_ssize_t n_blocks, Py_ssize_t d):
    """Whether `small` (a scoring.Int8Index, or None) has the layout the int8 kernels read for n_blocks
    blocks of 8 rows of d dimensions."""
    return (
        small is not None
        and small.blocks.shape[0] == n_blocks
        and small.blocks.shape[1] == (d + 3) // 4
        and small.blocks.shape[2] == 32
        and small.scale.shape[0] == n_blocks * 8
        and small.tl1.shape[0] == n_blocks * 8
    )


cdef class Placer:
    """One thread's views of one version's arrays and of its scratch buffers (`item_ranking.Scratch`),
    for `place`. `usable` is False when the version has something `place` does not cover everywhere
    (a partition, an id -> row mapping that is not a dict): then every call ranks in Python."""

    cdef readonly object state
    cdef readonly bint usable
    cdef Py_ssize_t n, d, cold_min
    cdef bint has_emb, has_half, has_int8, has_nbr, has_part
    cdef const float[:, ::1] emb
    cdef const uint16_t[:, :, ::1] blocks
    cdef const float[::1] absmax
    cdef const uint8_t[:, :, ::1] i8_blocks
    cdef const float[::1] i8_scale
    cdef const float[::1] i8_tl1
    cdef float i8_err
    # a large catalog's partition (core/partition.py), and this thread's buffers for its lists
    cdef const float[:, ::1] centroids
    cdef const int32_t[::1] starts
    cdef const uint16_t[:, :, ::1] part_blocks
    cdef const int32_t[::1] members
    cdef const float[::1] part_absmax
    cdef Py_ssize_t probes
    cdef bint has_part_int8
    cdef const uint8_t[:, :, ::1] part_i8_blocks
    cdef const float[::1] part_i8_scale
    cdef const float[::1] part_i8_tl1
    cdef float part_i8_err
    cdef float[::1] list_scores
    cdef int32_t[::1] list_order
    cdef const int32_t[:, ::1] nbr
    cdef const float[:, ::1] nbr_w
    cdef uint8_t[::1] mask
    cdef float[::1] work
    cdef int32_t[::1] cand
    cdef int32_t[::1] pair_rows
    cdef float[::1] pair_scores
    cdef int32_t[::1] slot
    cdef int32_t[::1] idx
    cdef float[::1] out_scores
    cdef float[::1] query
    cdef int32_t[::1] seeds
    cdef dict rows
    cdef tuple item_ids
    cdef dict views  # id(array) -> _Mask / _Vec / _Order of that array (which it keeps alive)

    def __init__(self, object state, object scratch):
        import numpy as np

        self.state = state
        self.n = len(state.item_ids)
        self.d = state.dim
        self.views = {}
        self.usable = (
            type(state.rows) is dict
            and type(state.item_ids) is tuple
            and scratch.mask.shape[0] == self.n
            and scratch.query.shape[0] == self.d
        )
        if not self.usable:
            return
        self.rows = state.rows
        self.item_ids = state.item_ids
        self.cold_min = max(1, state.rules.cold_start_min_views)
        self.mask = scratch.mask
        self.work = scratch.padded
        self.cand = scratch.cand
        self.pair_rows = scratch.pair_rows
        self.pair_scores = scratch.pair_scores
        self.slot = scratch.slot
        self.idx = scratch.idx
        self.out_scores = scratch.scores
        self.query = scratch.query
        self.seeds = np.zeros(self.n, dtype=np.int32)
        emb = state.embeddings
        # Vectors of fewer than 2 dimensions stay with the reference: NumPy's mean of rows sums a
        # single column pairwise (see mean_rows)
        self.has_emb = (
            emb is not None and emb.shape[0] == self.n and emb.shape[1] == self.d and self.d >= 2
        )
        if self.has_emb:
            self.emb = emb
            half = state.half_embeddings
            self.has_half = (
                half is not None
                and half.blocks.shape[0] == (self.n + 7) // 8
                and half.blocks.shape[1] == self.d
                and half.blocks.shape[2] == 8
                and half.col_absmax.shape[0] == self.d
                and self.work.shape[0] >= half.blocks.shape[0] * 8
            )
            if self.has_half:
                self.blocks = half.blocks
                self.absmax = half.col_absmax
            small = state.int8_embeddings
            self.has_int8 = (
                _int8_fits(small, (self.n + 7) // 8, self.d)
                and self.work.shape[0] >= self.n
                and self.cand.shape[0] >= self.n
            )
            if self.has_int8:
                self.i8_blocks = small.blocks
                self.i8_scale = small.scale
                self.i8_tl1 = small.tl1
                self.i8_err = small.err_ratio
            if state.partition is not None:
                self.has_part = self._bind_partition(state.partition)
                # an invalid partition: the reference raises what is wrong with it
                self.usable = self.has_part
        nbr, nbr_w = state.neighbors, state.neighbor_scores
        self.has_nbr = (
            nbr is not None
            and nbr_w is not None
            and nbr.ndim == 2
            and nbr_w.shape[0] == nbr.shape[0]
            and nbr_w.shape[1] == nbr.shape[1]
        )
        if self.has_nbr:
            self.nbr = nbr
            self.nbr_w = nbr_w

    cdef bint _bind_partition(self, object part) except? -1:
        """Views of the partition's arrays, when they are what topk_partition_into accepts."""
        import numpy as np

        cdef Py_ssize_t lists = part.centroids.shape[0]
        cdef Py_ssize_t l
        try:
            self.centroids = part.centroids
            self.starts = part.starts
            self.part_blocks = part.blocks
            self.members = part.members
            self.part_absmax = part.col_absmax
        except (TypeError, ValueError, BufferError):
            return False
        if (
            part.rows != self.n
            or self.centroids.shape[1] != self.d
            or self.starts.shape[0] != lists + 1
            or self.part_blocks.shape[1] != self.d
            or self.part_blocks.shape[2] != 8
            or self.members.shape[0] != self.part_blocks.shape[0] * 8
            or self.part_absmax.shape[0] != self.d
            or self.work.shape[0] < self.n
            or self.cand.shape[0] < self.n
            or part.probes < 0
            or (lists and self.starts[0] != 0)
        ):
            return False
        for l in range(lists):
            if self.starts[l + 1] < self.starts[l] or self.starts[l + 1] > self.part_blocks.shape[0]:
                return False
        self.probes = part.probes
        self.list_scores = np.zeros(lists, dtype=np.float32)
        self.list_order = np.zeros(lists, dtype=np.int32)
        small = part.int8
        self.has_part_int8 = _int8_fits(small, self.part_blocks.shape[0], self.d)
        if self.has_part_int8:
            self.part_i8_blocks = small.blocks
            self.part_i8_scale = small.scale
            self.part_i8_tl1 = small.tl1
            self.part_i8_err = small.err_ratio
        return True

    cdef _Mask _mask_of(self, object array):
        """The view of a base mask, kept when it is one of the version's (None: not a usable mask)."""
        cdef object kept = self.views.get(id(array))
        cdef _Mask m
        if type(kept) is _Mask and (<_Mask>kept).array is array:
            return <_Mask>kept
        m = _Mask()
        try:
            m.v = array
        except (TypeError, ValueError, BufferError):
            return None
        if m.v.shape[0] != self.n:
            return None
        m.array = array
        self._keep(array, m)
        return m

    cdef int _keep(self, object array, object view) except -1:
        """Keep `view` of `array` for the next calls (at most `_VIEWS_KEPT`; all dropped past that)."""
        if len(self.views) >= _VIEWS_KEPT:
            self.views.clear()
        self.views[id(array)] = view
        return 0

    cdef _Vec _vec_of(self, object array, bint keep):
        """The view of a score vector; kept only when `keep` (a version's derived scores: a vector
        without an order may be the store's, valid only in this read transaction)."""
        cdef object kept = self.views.get(id(array))
        cdef _Vec s
        if type(kept) is _Vec and (<_Vec>kept).array is array:
            return <_Vec>kept
        s = _Vec()
        try:
            s.v = array
        except (TypeError, ValueError, BufferError):
            return None
        s.array = array
        if keep:
            self._keep(array, s)
        return s

    cdef _Order _order_of(self, object array):
        cdef object kept = self.views.get(id(array))
        cdef _Order o
        if type(kept) is _Order and (<_Order>kept).array is array:
            return <_Order>kept
        o = _Order()
        try:
            o.v = array
        except (TypeError, ValueError, BufferError):
            return None
        o.array = array
        self._keep(array, o)
        return o


cdef inline Py_ssize_t _row(dict rows, object item_id):
    """The row of `item_id`, or -1."""
    cdef PyObject* r = PyDict_GetItem(rows, item_id)
    return -1 if r is NULL else <Py_ssize_t>(<object>r)


cdef list _rows_of(dict rows, object item_ids):
    cdef list out = []
    cdef Py_ssize_t r
    for item_id in item_ids:
        r = _row(rows, item_id)
        if r >= 0:
            out.append(r)
    return out


# NumPy's mean(matrix[rows], axis=0) for float32: a float32 sum per column that starts from 0 (so a
# column of -0.0 sums to +0.0) and adds the rows in order (the reduction's inner loop runs along the
# columns, so each column's sum is sequential), then divided by the count in double and rounded to
# float32, as NumPy divides by its intp count. In C without -ffast-math (the module is compiled with it,
# which would reassociate the sums and turn the division into a multiplication by the reciprocal).
cdef extern from *:
    """
    #if defined(__GNUC__) && !defined(__clang__)
    __attribute__((optimize("no-fast-math")))
    #endif
    static void ew_mean_rows(const float* base, Py_ssize_t d, const Py_ssize_t* rows, Py_ssize_t m,
                             float* out) {
        const float* row;
        Py_ssize_t i, j;
        for (j = 0; j < d; j++) out[j] = 0.0f;
        for (i = 0; i < m; i++) {
            row = base + rows[i] * d;
            for (j = 0; j < d; j++) out[j] = out[j] + row[j];
        }
        for (j = 0; j < d; j++) out[j] = (float)((double)out[j] / (double)m);
    }
    """
    void _mean_rows "ew_mean_rows" (
        const float* base, Py_ssize_t d, const Py_ssize_t* rows, Py_ssize_t m, float* out
    ) noexcept nogil


def mean_rows(const float[:, ::1] matrix, list rows, float[::1] out):
    """NumPy's `np.mean(matrix[rows], axis=0, out=out)` for float32 (rows: a non-empty list of valid
    row numbers, repeats allowed; out: [d]), computed in C as `place` does. At least 2 columns: with
    one, NumPy's reduction runs along the rows and sums them pairwise, which this does not follow."""
    cdef Py_ssize_t m = len(rows), i
    cdef Py_ssize_t n = matrix.shape[0]
    cdef Py_ssize_t d = matrix.shape[1]
    if m == 0 or out.shape[0] != d or d < 2:
        raise ValueError("rows must not be empty; out must have the matrix's d >= 2 entries")
    cdef Py_ssize_t[::1] picked = _index_array(m)
    for i in range(m):
        picked[i] = rows[i]
        if picked[i] < 0 or picked[i] >= n:
            raise ValueError("every row must be in [0, n)")
    with nogil:
        _mean_rows(&matrix[0, 0], d, &picked[0], m, &out[0])


cdef Py_ssize_t[::1] _index_array(Py_ssize_t m):
    import numpy as np

    return np.empty(m, dtype=np.intp)


cdef object _miss_reason(object shopper):
    if not shopper.allowed:
        return _NO_CONSENT
    return _COLD_START if shopper.known else _UNKNOWN_USER


cdef bint _query_of_rows(Placer p, list rows, bint copy_one):
    """The mean of the embeddings of `rows` into p.query (rows: valid, non-empty); `copy_one`: one row
    is copied, not averaged (the reference's np.copyto: -0.0 stays -0.0)."""
    cdef Py_ssize_t m = len(rows), i
    if copy_one and m == 1:
        if p.d > 0:
            memcpy(&p.query[0], &p.emb[<Py_ssize_t>rows[0], 0], p.d * sizeof(float))
        return True
    cdef Py_ssize_t small[64]
    cdef Py_ssize_t[::1] big
    cdef Py_ssize_t* picked = small
    if m > 64:
        big = _index_array(m)
        picked = &big[0]
    for i in range(m):
        picked[i] = <Py_ssize_t>rows[i]
    if p.d > 0:
        _mean_rows(&p.emb[0, 0], p.d, picked, m, &p.query[0])
    return True


def place(
    Placer p,
    object view,
    object base,
    object ask,
    Py_ssize_t count,
    object serve,
    object default,
    object shopper,
    str country,
    object now_ms,
    object scored,
):
    """`rank_items`'s (items, strategy, fallback) for a placement without explanation, or None: a case
    this path leaves to `rank_items` (see the module's docstring). `base`: the availability mask of the
    request's country narrowed by the strategy's filters (one of the version's arrays: `item_ranking`'s
    `_base_mask`); `scored(view, state, strategy, scope,
    half_life_days, shopper, country, now_ms)`: the (scores, order) of popularity or trending, or None."""
    if not p.usable or count < 0:
        return None
    if serve.boosts or serve.promotions is not None or serve.diversity is not None:
        return None
    cdef str strategy = serve.strategy
    if strategy != "personalized" and strategy != "similar" and strategy != "popular" and strategy != "trending":
        return None
    cdef _Mask bm = p._mask_of(base)
    if bm is None:
        return None
    cdef dict rows = p.rows
    cdef Py_ssize_t n = p.n, d = p.d, r, i, got, fetch, organic, found = 0, k
    cdef uint8_t* mask = &p.mask[0] if n > 0 else NULL
    cdef const uint8_t* bmask = &bm.v[0] if n > 0 else NULL
    cdef object activity = shopper.activity
    cdef bint allowed = shopper.allowed
    cdef list picked
    # 1. the candidate mask
    candidate_ids = ask.candidate_ids
    if candidate_ids:
        picked = _rows_of(rows, candidate_ids)
        if n > 0:
            memset(mask, 0, n)
        for r in picked:
            mask[r] = bmask[r]
    elif n > 0:
        memcpy(mask, bmask, n)
    for item_id in ask.exclude_ids:
        r = _row(rows, item_id)
        if r >= 0:
            mask[r] = 0
    cdef list viewed = None
    if activity is not None and serve.exclude_viewed and activity.views:
        viewed = shopper.viewed_list(p.state)
        for r in viewed:
            mask[r] = 0
    if activity is not None and serve.exclude_purchased:
        for pair in activity.purchases:
            r = _row(rows, pair[0])
            if r >= 0:
                mask[r] = 0
    # 2. the strategy: a query vector, neighbor candidates, or scores (with their order, when known)
    cdef bint has_query = False, has_cand = False
    cdef object fallback = _NONE
    cdef object scores_obj = None, order_obj = None, scored_pair
    cdef object vector
    cdef list seeds
    if strategy == "personalized":
        if not allowed:
            fallback = _NO_CONSENT
        elif not p.has_emb:
            return None  # the store's matrix, if any: the reference reads it
        else:
            strategy = "embedding"
            profile = shopper.profile
            vector = profile.embedding if profile is not None else None
            if vector:
                if type(vector) is not bytes or len(vector) % 4 or not _LITTLE:
                    return None  # the reference's np.frombuffer decides (and raises)
                if len(vector) // 4 != d:
                    fallback = _MODEL_UNAVAILABLE
                else:
                    if d > 0:
                        memcpy(&p.query[0], <const char*>(<bytes>vector), d * 4)
                    has_query = True
            else:
                if viewed is None:
                    viewed = shopper.viewed_list(p.state)
                if len(viewed) >= p.cold_min:
                    has_query = _query_of_rows(p, viewed, False)
                else:
                    fallback = _miss_reason(shopper)
    elif strategy == "similar":
        seeds = _rows_of(rows, ask.seed_item_ids)
        if not seeds and allowed and activity is not None and activity.views:
            r = _row(rows, activity.views[len(activity.views) - 1][0])
            if r >= 0:
                seeds = [r]
        if seeds and len(seeds) > n:
            return None
        for r in seeds:
            mask[r] = 0
        if not seeds:
            fallback = _miss_reason(shopper)
        else:
            method = serve.method
            if method != "embedding":
                if not p.has_nbr:
                    return None  # row chunks or the store's arrays: the reference reads them
                k = len(seeds)
                for i in range(k):
                    p.seeds[i] = <int32_t>(<Py_ssize_t>seeds[i])
                with nogil:
                    found = neighbor_candidates_kernel(
                        p.nbr, p.nbr_w, p.seeds[:k], p.mask, p.slot, p.pair_rows, p.pair_scores
                    )
                has_cand = True
            if method != "cooccurrence":
                if not p.has_emb:
                    return None
                has_query = _query_of_rows(p, seeds, True)
            if not has_cand and not has_query:
                fallback = _MODEL_UNAVAILABLE
    else:  # popular, trending
        scored_pair = scored(
            view, p.state, strategy, serve.scope, serve.half_life_days, shopper, country, now_ms
        )
        if scored_pair is None:
            fallback = _MODEL_UNAVAILABLE
        else:
            scores_obj, order_obj = scored_pair
    if not has_query and scores_obj is None and not has_cand:
        strategy = default.strategy
        scored_pair = None
        if strategy == "trending":
            scored_pair = scored(
                view, p.state, "trending", default.scope, default.half_life_days, shopper, country, now_ms
            )
        if scored_pair is None:
            strategy = "popular"
            scored_pair = scored(
                view, p.state, "popular", default.scope, default.half_life_days, shopper, country, now_ms
            )
        scores_obj, order_obj = scored_pair
        if fallback is _NONE:
            fallback = _MODEL_UNAVAILABLE
    # 3. the top rows: neighbors first, then the query's scan or the scores
    cdef object sunk = None
    cdef int max_impressions = serve.max_impressions
    if max_impressions and activity is not None and activity.impressions:
        sunk = set()
        for pair in activity.impressions:
            if pair[1] >= max_impressions:
                r = _row(rows, pair[0])
                if r >= 0:
                    sunk.add(r)
    organic = count
    fetch = organic + (len(sunk) if sunk is not None else 0)
    if fetch > n:
        fetch = n
    if fetch > p.idx.shape[0]:
        return None  # the reference grows the thread's buffers
    cdef _Vec sv = None
    cdef _Order ov = None
    if scores_obj is not None:
        sv = p._vec_of(scores_obj, order_obj is not None)
        if sv is None or sv.v.shape[0] != n:
            return None  # another dtype or layout: the reference converts it (or names the error)
        if order_obj is not None:
            ov = p._order_of(order_obj)
            if ov is None or ov.v.shape[0] != n:
                return None
    cdef list out_rows = []
    cdef list out_values = []
    if has_cand:
        with nogil:
            got = topk_pairs_kernel(
                p.pair_rows, p.pair_scores, found, p.mask, fetch, p.idx, p.out_scores
            )
        for i in range(got):
            out_rows.append(p.idx[i])
            out_values.append(p.out_scores[i])
        fetch -= got
        if not has_query:
            fetch = 0
    if fetch > 0 and has_query:
        with nogil:
            if p.has_part and p.has_part_int8 and _use_int8:  # a large catalog: the lists nearest the query
                got = topk_partition_int8_kernel(
                    p.centroids, p.starts, p.part_blocks, p.members, p.part_absmax, p.part_i8_blocks,
                    p.part_i8_scale, p.part_i8_tl1, p.part_i8_err, p.emb, p.query, p.mask, fetch, p.probes,
                    p.list_scores, p.list_order, p.work, p.cand, p.idx, p.out_scores
                )
            elif p.has_part:
                got = topk_partition_kernel(
                    p.centroids, p.starts, p.part_blocks, p.members, p.part_absmax, p.emb, p.query, p.mask,
                    fetch, p.probes, p.list_scores, p.list_order, p.work, p.cand, p.idx, p.out_scores
                )
            elif p.has_int8 and (_use_int8 or not p.has_half):
                got = topk_int8_kernel(
                    p.i8_blocks, p.i8_scale, p.i8_tl1, p.i8_err, p.emb, p.query, p.mask, fetch, p.work,
                    p.cand, p.idx, p.out_scores
                )
            elif p.has_half:
                got = topk_half_kernel(
                    p.blocks, p.absmax, p.emb, p.query, p.mask, fetch, p.work, p.cand, p.idx, p.out_scores
                )
            else:
                got = topk_dot_kernel(p.emb, p.query, p.mask, fetch, p.idx, p.out_scores)
        for i in range(got):
            out_rows.append(p.idx[i])
            out_values.append(p.out_scores[i])
        fetch = 0
    if fetch > 0:
        got = -1
        if ov is not None and not has_query:
            with nogil:
                got = topk_sorted_kernel(ov.v, sv.v, p.mask, fetch, _SORTED_WALK, p.idx, p.out_scores)
        if got < 0:
            with nogil:
                got = topk_scores_kernel(sv.v, p.mask, fetch, p.idx, p.out_scores)
        for i in range(got):
            out_rows.append(p.idx[i])
            out_values.append(p.out_scores[i])
    # 4. rotation: rows shown too often without a click move to the end (stable), then the first `count`
    cdef list kept_rows, kept_values, late_rows, late_values
    if sunk:
        kept_rows, kept_values, late_rows, late_values = [], [], [], []
        for i in range(len(out_rows)):
            if out_rows[i] in sunk:
                late_rows.append(out_rows[i])
                late_values.append(out_values[i])
            else:
                kept_rows.append(out_rows[i])
                kept_values.append(out_values[i])
        out_rows = kept_rows + late_rows
        out_values = kept_values + late_values
    if len(out_rows) > organic:
        del out_rows[organic:]
        del out_values[organic:]
    return item_results(_ITEM_RESULT, p.item_ids, out_rows, out_values, strategy), strategy, fallback
