"""The partitioned scan (edgewise.core.partition) against its NumPy reference, and its recall.

Integer-valued inputs (matrix, query and centroids) make every dot product exact whatever the summation
order, so the kernel and `topk_partition_reference` must agree exactly, ties included: which lists are
scanned, and the top k within them. On the synthetic bundle's embeddings the partition built by
`build_partition` must find at least 98% of the exact float32 top 20 (recall@20), for user queries and
for item queries (similar items), with every row a candidate and with a country's availability mask.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import examples
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from edgewise.core import _scoring, partition, scoring
from edgewise.core.decisions import DecideRequest, PlacementRequest
from edgewise.core.partition import (
    Partition,
    PartitionScratch,
    build_partition,
    partition_from_assignment,
    topk_partition_into,
    topk_partition_reference,
)
from edgewise.core.pipeline import Pipeline
from edgewise.core.store import Store
from edgewise.sync.bundle import Bundle, load_bundle
from edgewise.sync.snapshot import apply_bundle

stable = settings(derandomize=True, max_examples=examples(300), deadline=None)


def _run(
    part: Partition, matrix: NDArray[np.float32], query: NDArray[np.float32], mask: NDArray[np.uint8], k: int
) -> tuple[NDArray[np.int32], NDArray[np.float32]]:
    n = matrix.shape[0]
    out_idx = np.full(k + 2, -7, dtype=np.int32)
    out_scores = np.full(k + 2, -7.0, dtype=np.float32)
    work = np.full(n, -7.0, dtype=np.float32)
    cand = np.zeros(n, dtype=np.int32)
    written = topk_partition_into(
        part, matrix, query, mask, k, PartitionScratch(), work, cand, out_idx, out_scores
    )
    assert (out_idx[written:] == -7).all()
    assert (out_scores[written:] == -7.0).all()
    return out_idx[:written], out_scores[:written]


def _int_partition(
    rng: np.random.Generator, n: int, d: int, lists: int, probes: int
) -> tuple[NDArray[np.float32], Partition]:
    matrix = rng.integers(-3, 4, size=(n, d)).astype(np.float32)
    centroids = rng.integers(-2, 3, size=(lists, d)).astype(np.float32)
    assignment = rng.integers(0, lists, size=n)
    part = partition_from_assignment(matrix, assignment, centroids, probes)
    assert part is not None
    return matrix, part


@pytest.fixture(params=[False, True], ids=["fastest", "portable"])
def portable(request: pytest.FixtureRequest) -> Iterator[bool]:
    previous = _scoring.set_portable(request.param)
    yield request.param
    _scoring.set_portable(previous)


@stable
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(0, 150),
    d=st.integers(1, 12),
    lists=st.integers(1, 12),
    probes=st.integers(0, 14),
    k=st.integers(0, 40),
    p=st.sampled_from([0.0, 0.05, 0.3, 0.9, 1.0]),
    portable_only=st.booleans(),
)
def test_kernel_matches_reference_on_exact_inputs(
    seed: int, n: int, d: int, lists: int, probes: int, k: int, p: float, portable_only: bool
) -> None:
    rng = np.random.default_rng(seed)
    matrix, part = _int_partition(rng, n, d, lists, probes)
    query = rng.integers(-3, 4, size=d).astype(np.float32)
    mask = np.where(rng.random(n) < p, rng.integers(1, 256, size=n), 0).astype(np.uint8)
    previous = _scoring.set_portable(portable_only)
    try:
        idx, got = _run(part, matrix, query, mask, k)
    finally:
        _scoring.set_portable(previous)
    want_idx, want = topk_partition_reference(part, matrix, query, mask, k)
    np.testing.assert_array_equal(idx, want_idx)
    np.testing.assert_array_equal(got, want)


def test_scanning_every_list_is_the_exact_top_k(portable: bool) -> None:
    rng = np.random.default_rng(5)
    matrix, part = _int_partition(rng, 3_000, 16, 40, probes=40)
    mask = (rng.random(3_000) < 0.7).astype(np.uint8)
    for _ in range(20):
        query = rng.integers(-3, 4, size=16).astype(np.float32)
        idx, got = _run(part, matrix, query, mask, 25)
        want_idx, want = scoring.topk_dot_reference(matrix, query, mask, 25)
        np.testing.assert_array_equal(idx, want_idx)
        np.testing.assert_array_equal(got, want)


def test_a_mask_that_keeps_few_rows_scans_on_until_k_candidates() -> None:
    # 30 candidates in all, probes=1: the kernel goes past the first list until it has seen k of them;
    # asking for more than there are scans every list, so the result is every candidate, ranked.
    rng = np.random.default_rng(11)
    matrix, part = _int_partition(rng, 2_000, 8, 30, probes=1)
    mask = np.zeros(2_000, dtype=np.uint8)
    mask[rng.choice(2_000, 30, replace=False)] = 1
    query = rng.integers(-3, 4, size=8).astype(np.float32)
    idx, _ = _run(part, matrix, query, mask, 10)
    assert len(idx) == 10
    np.testing.assert_array_equal(idx, topk_partition_reference(part, matrix, query, mask, 10)[0])
    idx, got = _run(part, matrix, query, mask, 40)
    want_idx, want = scoring.topk_dot_reference(matrix, query, mask, 40)
    np.testing.assert_array_equal(idx, want_idx)
    np.testing.assert_array_equal(got, want)


def test_float_inputs_match_the_reference() -> None:
    rng = np.random.default_rng(2)
    centres = rng.standard_normal((20, 24)).astype(np.float32)
    matrix = (centres[rng.integers(0, 20, 8_000)] + 0.3 * rng.standard_normal((8_000, 24))).astype(np.float32)
    part = build_partition(matrix)
    assert part is not None and part.lists == 89 and part.probes == 12
    mask = (rng.random(8_000) < 0.8).astype(np.uint8)
    for _ in range(30):
        query = rng.standard_normal(24).astype(np.float32)
        idx, got = _run(part, matrix, query, mask, 20)
        want_idx, want = topk_partition_reference(part, matrix, query, mask, 20)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        assert len(set(idx.tolist()) ^ set(want_idx.tolist())) <= 2  # at most a near-tie swapped
        np.testing.assert_allclose(got, matrix[idx] @ query, rtol=1e-5, atol=1e-5)  # exact scores


def test_partition_layout() -> None:
    rng = np.random.default_rng(1)
    matrix, part = _int_partition(rng, 1_001, 5, 9, probes=2)
    # every row in exactly one slot, padding -1, each list a whole number of blocks
    members = part.members
    assert sorted(members[members >= 0].tolist()) == list(range(1_001))
    assert part.blocks.shape == (int(part.starts[-1]), 5, 8)
    halves = part.blocks.view(np.float16).transpose(0, 2, 1).reshape(-1, 5)
    np.testing.assert_array_equal(halves[members >= 0].astype(np.float32), matrix[members[members >= 0]])
    assert part.nbytes > part.blocks.nbytes


def test_no_partition_for_what_half_precision_cannot_hold() -> None:
    big = np.full((10, 3), 70_000.0, dtype=np.float32)
    assert build_partition(big) is None
    assert build_partition(np.zeros((0, 3), dtype=np.float32)) is None


def test_the_gate() -> None:
    assert not partition.use_partition(10_000)  # the bench mix: decisions unchanged (its digest)
    assert partition.use_partition(partition.PARTITION_MIN_ROWS)
    assert partition.use_partition(100_000)


def test_bad_arguments_are_named() -> None:
    rng = np.random.default_rng(4)
    matrix, part = _int_partition(rng, 100, 6, 5, probes=2)
    query = np.ones(6, dtype=np.float32)
    mask = np.ones(100, dtype=np.uint8)
    idx, sc = np.zeros(5, dtype=np.int32), np.zeros(5, dtype=np.float32)
    work, cand = np.zeros(100, dtype=np.float32), np.zeros(100, dtype=np.int32)
    scratch = PartitionScratch()
    with pytest.raises(ValueError, match="partition was built for 100 x 6"):
        topk_partition_into(part, matrix[:50], query, mask[:50], 5, scratch, work, cand, idx, sc)
    with pytest.raises(ValueError, match="work and cand need 100"):
        topk_partition_into(part, matrix, query, mask, 5, scratch, work[:10], cand, idx, sc)
    with pytest.raises(ValueError, match="query has length 3"):
        topk_partition_into(part, matrix, query[:3], mask, 5, scratch, work, cand, idx, sc)
    with pytest.raises(ValueError, match="k must be >= 0"):
        topk_partition_into(part, matrix, query, mask, -1, scratch, work, cand, idx, sc)
    bad = dataclasses.replace(part, starts=part.starts[::-1].copy())
    with pytest.raises(ValueError, match="starts"):
        topk_partition_into(bad, matrix, query, mask, 5, scratch, work, cand, idx, sc)
    with pytest.raises(ValueError, match="assignment"):
        partition_from_assignment(matrix, np.full(100, 9), part.centroids, 2)


# Recall on the synthetic bundle's own embeddings (edgewise.offline.synth draws them in this order).


def _synthetic_embeddings(
    items: int, users: int
) -> tuple[NDArray[np.float32], NDArray[np.float32], list[bool]]:
    from edgewise.offline import synth

    rng = np.random.default_rng(7)
    catalog = synth._Catalog(rng, 32)
    records, _, leaf = synth._item_records(rng, catalog, items, users)
    item_emb = synth._item_embeddings(rng, catalog, leaf, 32).astype(np.float32)
    user_emb = synth._Users(rng, catalog, users).embeddings(rng, catalog, 32).astype(np.float32)
    regions = ["*" in r["regions"] or "FR" in r["regions"] for r in records]
    return item_emb, user_emb, regions


def _recall(
    part: Partition, matrix: NDArray[np.float32], queries: NDArray[np.float32], mask: NDArray[np.uint8]
) -> float:
    hits = 0
    for query in queries:
        idx, _ = _run(part, matrix, query, mask, 20)
        exact = scoring.topk_dot_reference(matrix, query, mask, 20)[0]
        hits += len(set(idx.tolist()) & set(exact.tolist()))
    return hits / (20 * len(queries))


@pytest.mark.slow
def test_recall_at_20_on_the_synthetic_bundle() -> None:
    items, users = 100_000, 2_000
    matrix, user_emb, in_fr = _synthetic_embeddings(items, users)
    part = build_partition(matrix)
    assert part is not None and part.lists == 316 and part.probes == 40
    every = np.ones(items, dtype=np.uint8)
    fr = np.array(in_fr, dtype=np.uint8)
    rng = np.random.default_rng(0)
    items_asked = matrix[rng.choice(items, 100, replace=False)]
    recalls = {
        "users, every row": _recall(part, matrix, user_emb[:200], every),
        "users, FR availability": _recall(part, matrix, user_emb[200:300], fr),
        "similar items, every row": _recall(part, matrix, items_asked, every),
    }
    assert all(r >= 0.98 for r in recalls.values()), recalls


# In the decision pipeline: a catalog at or above the threshold is ranked through its partition.


def _requests(bundle: Bundle) -> list[DecideRequest]:
    users = [p.id for p in bundle.profiles if "personalization" in p.consent][:60]
    seeds = [i.id for i in bundle.items[:60]]
    return [
        DecideRequest(
            user_id=u,
            consent=frozenset({"personalization"}),
            placements=(PlacementRequest("home", 10), PlacementRequest("pdp_similar", 5, seed_item_ids=(s,))),
            explain=True,
        )
        for u, s in zip(users, seeds, strict=True)
    ]


def test_the_pipeline_ranks_a_large_catalog_through_its_partition(
    tmp_path: Path, bundle_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = load_bundle(bundle_dir)
    store = Store(tmp_path / "store", map_size=1 << 30)
    try:
        apply_bundle(store, bundle)
        requests = _requests(bundle)

        def decisions(pipeline: Pipeline) -> list[str]:
            out = []
            for request in requests:
                with store.read() as view:
                    out.append(repr(pipeline.decide(view, request)))
            return out

        full = Pipeline()
        with store.read() as view:
            assert full.state(view).partition is None  # 300 items: below the threshold
        exact = decisions(full)
        monkeypatch.setattr(partition, "PARTITION_MIN_ROWS", 100)
        monkeypatch.setattr(partition, "PROBE_SHARE", 1.0)  # every list scanned: the exact ranking
        every_list = Pipeline()
        with store.read() as view:
            state = every_list.state(view)
        assert state.partition is not None and state.half_embeddings is None
        assert state.partition.probes == state.partition.lists == 17
        assert decisions(every_list) == exact
        monkeypatch.setattr(partition, "PROBE_SHARE", 1 / 8)
        few_lists = Pipeline()
        with store.read() as view:
            state = few_lists.state(view)
        assert state.partition is not None and state.partition.probes == 3
        embeddings = bundle.item_embeddings
        rows = {item.id: j for j, item in enumerate(bundle.items)}
        checked = 0
        for request in requests:
            with store.read() as view:
                decision = few_lists.decide(view, request)
            home = decision.placements[0]
            if home.strategy != "embedding":
                continue
            assert bundle.user_embeddings is not None
            query = bundle.user_embeddings[
                next(j for j, p in enumerate(bundle.profiles) if p.id == request.user_id)
            ]
            checked += 1
            for item in home.items:  # scores are the exact float32 ones
                assert item.score == pytest.approx(
                    float(embeddings[rows[item.id]] @ query), rel=1e-5, abs=1e-6
                )
        assert checked >= 20
    finally:
        store.close()
