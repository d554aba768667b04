"""The hybrid embedding model (core/hybrid_embeddings.py) shared by the retail importer and the control
plane's embeddings refresh (`[refresh] embeddings_method = "hybrid"`): on a real control store and event
store (LMDB), a retail bundle pushed, its invoices replayed as purchase events, the job's commit carries
the importer's vectors; items without events get rows from their tags; items made from events get rows
from co-purchase; a rollback restores the bundle's arrays; and none of it needs the `train` extra."""

from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from edgewise.core.activity import Event
from edgewise.core.embedding_slots import GENERATION_MODEL, active_generation
from edgewise.core.embedding_training import TrainingSettings, interactions_from_events, train_embeddings
from edgewise.core.hybrid_embeddings import HybridParams, dense_cells, item_similarity, term_similarity
from edgewise.core.model_refresh import NewItems, PopularityRefresh
from edgewise.core.records import decode_array, decode_item, decode_profile
from edgewise.offline.retail import REQUIRED_COLUMNS, description_similarity, description_terms, retail_bundle
from edgewise.sync.bundle import Bundle, load_bundle
from edgewise.sync.changes import bundle_records
from edgewise.sync.control_config import RefreshConfig
from edgewise.sync.control_serve import add_control_serve_arguments, run_control_serve
from edgewise.sync.control_store import ControlStore
from edgewise.sync.embedding_refresh_job import EmbeddingRefreshJob
from edgewise.sync.event_store import EventStore
from edgewise.sync.model_refresh import RefreshJob
from edgewise.sync.model_refresh_jobs import embedding_settings, refresh_jobs

DIM = 8
DAY_MS = 86_400_000
# Four product lines; each customer buys mostly from one line. Every word has three letters or more and
# none is a stopword, so the bundle's tags are the description's words: the refresh sees the same text.
LINES = {
    "SP": ["SPACEBOY LUNCH BOX", "SPACEBOY BIRTHDAY CARD", "SPACEBOY BEAKER", "SPACEBOY WALL CLOCK"],
    "RS": ["RETROSPOT LUNCH BOX", "RETROSPOT APRON", "RETROSPOT TEAPOT", "RETROSPOT UMBRELLA"],
    "WD": ["WOODLAND STICKERS", "WOODLAND CHARLOTTE BAG", "WOODLAND BEAKER", "WOODLAND GARLAND"],
    "PS": ["PAISLEY PARK CARD", "PAISLEY NOTEBOOK", "PAISLEY CUSHION COVER", "PAISLEY TEAPOT"],
}
CODES = {f"{line}{n}": text for line, texts in LINES.items() for n, text in enumerate(texts)}


def _start() -> date:
    """Recent days, so that the refresh's decay from the current time keeps every event (90-day half-life)."""
    return datetime.now(UTC).date() - timedelta(days=40)


def _purchases(start: date) -> list[tuple[str, str, date]]:
    """(customer, stock code, day): 24 customers, each buying 3-6 products, most of one line."""
    rng = np.random.default_rng(7)
    lines = list(LINES)
    out: list[tuple[str, str, date]] = []
    for c in range(24):
        home = lines[c % 4]
        for n in range(int(rng.integers(3, 7))):
            line = home if rng.random() < 0.8 else lines[int(rng.integers(0, 4))]
            code = f"{line}{int(rng.integers(0, 4))}"
            out.append((str(13000 + c), code, start + timedelta(days=int(rng.integers(0, 35)) + n % 2)))
    return out


def _csv(path: Path, purchases: list[tuple[str, str, date]]) -> Path:
    rows = [",".join(REQUIRED_COLUMNS)]
    for n, (customer, code, day) in enumerate(purchases):
        rows.append(f"{536000 + n},{code},{CODES[code]},1,{day.isoformat()} 00:00:00,2.50,{customer},France")
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def _events(purchases: list[tuple[str, str, date]]) -> list[tuple[str, str, bytes]]:
    out = []
    for n, (customer, code, day) in enumerate(purchases):
        ts = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000)
        payload = Event(f"e{n}", "purchase", f"c{customer}", "", f"p{code}", "", "", 0.0, ts).encode()
        out.append(("event", f"e{n}", payload))
    return out


@dataclass
class Plane:
    store: ControlStore
    events: EventStore
    bundle: Bundle
    purchases: list[tuple[str, str, date]]


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[Plane]:
    purchases = _purchases(_start())
    imported = retail_bundle(_csv(tmp_path / "invoices.csv", purchases), tmp_path / "bundle", dim=DIM)
    bundle = load_bundle(imported.out)
    with ControlStore(tmp_path / "control") as store, EventStore(tmp_path / "events") as events:
        store.replace_all(bundle_records(bundle), kind="push")
        yield Plane(store, events, bundle, purchases)


def _hybrid_job(plane: Plane) -> EmbeddingRefreshJob:
    settings = embedding_settings(RefreshConfig(embeddings=True, embeddings_method="hybrid"))
    return EmbeddingRefreshJob(
        plane.store, plane.events, threading.Lock(), lambda: None, settings, every=60, commit_pause=0
    )


def _head_array(store: ControlStore, name: str) -> np.ndarray:
    with store.read() as view:
        raw = view.get("models", name)
    assert raw is not None
    return np.array(decode_array(raw))


def _vector(store: ControlStore, user: str) -> np.ndarray | None:
    """The user's vector of the active embedding generation (core/embedding_slots.py)."""
    with store.read() as view:
        raw = view.get("profiles", user)
        generation = view.get("models", GENERATION_MODEL)
    assert raw is not None
    active = active_generation(decode_array(generation)) if generation is not None else 0
    e = decode_profile(user, raw, active).embedding
    return None if e is None else np.frombuffer(e, dtype="<f4")


def test_the_job_publishes_the_importers_vectors_from_replayed_events(
    plane: Plane, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("implicit", "implicit.cpu", "implicit.cpu.als", "implicit.cpu.bpr", "scipy.sparse"):
        monkeypatch.setitem(sys.modules, name, None)  # the hybrid needs neither implicit nor SciPy
    store, bundle = plane.store, plane.bundle
    pushed = store.head_version()
    plane.events.ingest("n1", _events(plane.purchases))
    info = _hybrid_job(plane).run_once()
    assert info is not None and not isinstance(info, int) and info.kind == "refresh"
    n_users = len({customer for customer, _, _ in plane.purchases})
    assert info.description.startswith(
        f"refresh embeddings: hybrid on {len(plane.purchases)} events, {n_users} users, 16 items trained, "
        "generation 1; "
    )
    items = _head_array(store, "item_embeddings")
    assert items.shape == bundle.item_embeddings.shape == (16, DIM)
    # Same model, same input: the importer's vectors (up to float32 rounding of the decayed weights).
    np.testing.assert_allclose(items, bundle.item_embeddings, atol=2e-5)
    assert bundle.user_embeddings is not None
    for j, profile in enumerate(bundle.profiles):
        vector = _vector(store, profile.id)
        assert vector is not None
        np.testing.assert_allclose(vector, bundle.user_embeddings[j], atol=2e-5)
    # Versioned and rolled back like any push: the bundle's arrays and vectors come back.
    store.rollback(pushed)
    np.testing.assert_array_equal(_head_array(store, "item_embeddings"), bundle.item_embeddings)
    first = bundle.profiles[0].id
    np.testing.assert_array_equal(_vector(store, first), bundle.user_embeddings[0])


def test_items_made_from_events_get_rows_from_co_purchase(plane: Plane) -> None:
    store, events = plane.store, plane.events
    events.ingest("n1", _events(plane.purchases))
    # Five customers of the SPACEBOY line buy a product the catalog lacks: the popularity job adds it.
    day = _start() + timedelta(days=36)
    ts = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000)
    buyers = [f"c{13000 + c}" for c in range(0, 24, 4)]  # customers 0, 4, 8 ... buy mostly SP products
    events.ingest(
        "n1",
        [
            ("event", f"new{n}", Event(f"new{n}", "purchase", user, "", "pSPNEW", "", "", 0.0, ts).encode())
            for n, user in enumerate(buyers)
        ],
    )
    popularity = RefreshJob(
        store,
        events,
        threading.Lock(),
        lambda: None,
        PopularityRefresh(7 * DAY_MS),
        every=60,
        new_items=NewItems(2),
    )
    while popularity.run_once() is not None:
        pass
    with store.read() as view:
        raw = view.get("items", "pSPNEW")
        assert raw is not None
        record = decode_item("pSPNEW", raw)
    assert record.row == 16 and record.flags.get("from_events") is True
    assert not _head_array(store, "item_embeddings")[16].any()  # a delta row: zero until trained

    info = _hybrid_job(plane).run_once()
    assert info is not None and not isinstance(info, int)
    items = _head_array(store, "item_embeddings")
    assert items.shape == (17, DIM) and np.any(items[16, : DIM - 1] != 0.0)
    # Its words say nothing (its one tag is `from_events`): its neighbours are what its buyers bought.
    cosine = items[:, : DIM - 1] @ items[16, : DIM - 1]
    cosine /= np.linalg.norm(items[:, : DIM - 1], axis=1) * np.linalg.norm(items[16, : DIM - 1])
    best = [int(r) for r in np.argsort(-cosine)[1:5]]
    with store.read() as view:
        ids = {decode_item(key, raw).row: key for key, raw in view.items("items")}
    assert sum(ids[r].startswith("pSP") for r in best) >= 3


def test_an_item_nobody_bought_gets_a_row_from_its_words() -> None:
    """Core: the hybrid gives every row a vector; one without interactions is placed by its words."""
    terms = [("spaceboy", "lunch"), ("spaceboy", "beaker"), ("retrospot", "apron"), ("retrospot", "teapot")]
    terms += [("spaceboy", "clock")]  # row 4: in the catalog, bought by nobody yet
    users = np.array([0, 0, 1, 1, 2, 3])
    items = np.array([0, 1, 2, 3, 0, 2])
    weights = np.ones(6, dtype=np.float32)
    settings = TrainingSettings(method="hybrid")
    flat = np.ones(5, dtype=np.float32)  # the same prior for every item: the ranking is the words'
    result = train_embeddings(
        users,
        items,
        weights,
        n_items=5,
        dim=4,
        previous=None,
        settings=settings,
        item_terms=terms,
        popularity=flat,
    )
    assert result.items.shape == (5, 4) and result.trained.all() and result.scale == 1.0
    spaceboy_fan = result.users[0]  # bought rows 0 and 1
    scores = result.items @ spaceboy_fan
    assert scores[4] > scores[2] and scores[4] > scores[3]  # the new SPACEBOY item before RETROSPOT
    again = train_embeddings(
        users,
        items,
        weights,
        n_items=5,
        dim=4,
        previous=None,
        settings=settings,
        item_terms=terms,
        popularity=flat,
    )
    np.testing.assert_array_equal(again.items, result.items)  # seeded: same input, same vectors


def test_the_core_model_is_the_importers_on_the_same_input(tmp_path: Path) -> None:
    """train_embeddings("hybrid") on the invoices' events, weighed at the importer's reference day, with
    the bundle's popularity and the descriptions' words: the bundle's vectors."""
    purchases = _purchases(date(2011, 3, 1))
    imported = retail_bundle(_csv(tmp_path / "invoices.csv", purchases), tmp_path / "b", dim=DIM)
    bundle = load_bundle(imported.out)
    rows = {item.id: r for r, item in enumerate(bundle.items)}
    ref = max(day for _, _, day in purchases)
    now_ms = int(datetime(ref.year, ref.month, ref.day, tzinfo=UTC).timestamp() * 1000)
    events = [
        (
            f"c{c}",
            f"p{code}",
            "purchase",
            int(datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp() * 1000),
        )
        for c, code, d in purchases
    ]
    interactions = interactions_from_events(events, rows, now_ms=now_ms, half_life_days=90.0, combine="max")
    terms = [description_terms(CODES[item.id[1:]]) for item in bundle.items]
    result = train_embeddings(
        interactions.users,
        interactions.items,
        interactions.weights,
        n_items=len(rows),
        dim=DIM,
        previous=None,
        settings=TrainingSettings(method="hybrid"),
        item_terms=terms,
        popularity=bundle.item_popularity,
    )
    np.testing.assert_allclose(result.items, bundle.item_embeddings, atol=2e-5)
    assert bundle.user_embeddings is not None
    by_profile = {p.id: j for j, p in enumerate(bundle.profiles)}
    for n, user_index in enumerate(result.user_rows):
        j = by_profile[interactions.user_ids[int(user_index)]]
        np.testing.assert_allclose(result.users[n], bundle.user_embeddings[j], atol=2e-5)


def test_description_similarity_is_the_term_similarity_of_its_words() -> None:
    texts = [*CODES.values(), "SET OF 3 CAKE TINS PANTRY DESIGN", ""]
    np.testing.assert_array_equal(
        description_similarity(texts), term_similarity([description_terms(t) for t in texts])
    )
    # The bundle's tags (lower case, 3+ letters) give the same similarity for these descriptions.
    tags = [[w.lower() for w in description_terms(t)] for t in CODES.values()]
    np.testing.assert_allclose(
        term_similarity(tags), description_similarity(list(CODES.values())), atol=1e-12
    )
    bought = np.zeros((3, 16), dtype=np.bool_)
    mixed = item_similarity(bought, tags, HybridParams(copurchase_weight=0.5))
    np.testing.assert_allclose(mixed, 0.5 * term_similarity(tags), atol=1e-12)


def test_settings_config_and_limits() -> None:
    jobs = refresh_jobs(
        RefreshConfig(embeddings=True, embeddings_method="hybrid"),
        None,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        threading.Lock(),
        lambda: None,
    )
    assert len(jobs) == 1 and isinstance(jobs[0], EmbeddingRefreshJob)
    assert jobs[0].settings.training.method == "hybrid"
    with pytest.raises(ValueError, match="hybrid with dim 8 trains 7 factors"):
        TrainingSettings(method="hybrid", factors=4).factors_for(8)
    with pytest.raises(ValueError, match="copurchase_weight"):
        HybridParams(copurchase_weight=1.5)
    assert dense_cells(100_000, 10_000) * 8 > 2**30  # why a large catalog is refused: use als
    with pytest.raises(ValueError, match="use the als method"):
        train_embeddings(
            np.array([0]),
            np.array([0]),
            np.ones(1, dtype=np.float32),
            n_items=20_000,
            dim=4,
            previous=None,
            settings=TrainingSettings(method="hybrid"),
        )


def test_control_serve_with_the_hybrid_needs_no_train_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("implicit", "implicit.cpu", "implicit.cpu.als", "implicit.cpu.bpr"):
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed: importing it raises
    parser = argparse.ArgumentParser()
    add_control_serve_arguments(parser)
    missing = tmp_path / "no-such-token"
    args = parser.parse_args(
        [
            *("--data", str(tmp_path / "ctl"), "--refresh-embeddings"),
            *("--refresh-embeddings-method", "hybrid", "--edge-token-file", str(missing)),
        ]
    )
    # Past the `train` extra's check: what stops it is the next check, the token file (als would stop
    # at the first, test_embedding_refresh_job.py).
    assert run_control_serve(args) == 2
    err = capsys.readouterr().err
    assert "no-such-token" in err and "implicit" not in err
