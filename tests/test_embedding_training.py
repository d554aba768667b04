"""core/embedding_training.py: implicit's ALS and BPR on planted structure, shapes, scale, carried rows,
determinism, and the message without the `train` extra."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from edgewise.core.embedding_training import (
    TRAIN_EXTRA_HINT,
    TrainedEmbeddings,
    TrainingSettings,
    TrainingUnavailable,
    carry_users,
    interactions_from_events,
    train_embeddings,
)
from edgewise.core.scoring import HALF_MAX

pytest.importorskip("implicit", reason="the `train` extra (implicit) is not installed")

GROUPS = 3
USERS_PER_GROUP = 30
ITEMS_PER_GROUP = 20
DIM = 8


def planted(
    seed: int = 0, share: float = 0.4
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float32], NDArray[np.int64], NDArray[np.int64]]:
    """Users of group g interact with a random `share` of group g's items only.

    Returns (users, items, weights, user group, item group)."""
    rng = np.random.default_rng(seed)
    user_group = np.repeat(np.arange(GROUPS), USERS_PER_GROUP)
    item_group = np.repeat(np.arange(GROUPS), ITEMS_PER_GROUP)
    users, items = [], []
    for user, group in enumerate(user_group):
        members = np.flatnonzero(item_group == group)
        picked = rng.choice(members, size=int(share * len(members)), replace=False)
        users += [user] * len(picked)
        items += picked.tolist()
    weights = rng.uniform(1.0, 3.0, len(users)).astype(np.float32)
    return np.array(users), np.array(items), weights, user_group, item_group


def train(method: str, previous: NDArray[Any] | None = None, **overrides: Any) -> TrainedEmbeddings:
    users, items, weights, _, item_group = planted()
    # alpha 1: the default 20 was chosen for the retail data's thin rows; these rows are 40% dense, and
    # a high confidence overfits them (item-item nearest neighbours in the group: 1.0 at alpha 1, 0.83 at 20).
    overrides.setdefault("alpha", 1.0)
    settings = TrainingSettings(method=method, iterations=overrides.pop("iterations", 30), **overrides)
    return train_embeddings(
        users, items, weights, n_items=len(item_group), dim=DIM, previous=previous, settings=settings
    )


@pytest.mark.parametrize("method", ["als", "bpr"])
def test_recovers_planted_groups(method: str) -> None:
    users, items, _, user_group, item_group = planted()
    result = train(method, iterations=60 if method == "bpr" else 30)
    assert np.array_equal(result.user_rows, np.arange(len(user_group)))
    scores = result.users @ result.items.T
    seen = np.zeros_like(scores, dtype=bool)
    seen[users, items] = True
    hits = 0
    for user, group in enumerate(user_group):
        unseen = np.flatnonzero(~seen[user])
        top = unseen[np.argsort(-scores[user, unseen], kind="stable")[:5]]
        hits += int(np.sum(item_group[top] == group))
    precision = hits / (5 * len(user_group))
    assert precision >= 0.9, precision
    # item . item: an item's nearest other item is in its group
    similar = result.items @ result.items.T
    np.fill_diagonal(similar, -np.inf)
    assert np.mean(item_group[similar.argmax(axis=1)] == item_group) >= 0.9


@pytest.mark.parametrize("method", ["als", "bpr"])
def test_shapes_scale_and_determinism(method: str) -> None:
    users, items, _, user_group, item_group = planted()
    result = train(method)
    again = train(method)
    assert result.items.shape == (len(item_group), DIM) and result.items.dtype == np.float32
    assert result.users.shape == (len(user_group), DIM) and result.users.dtype == np.float32
    assert result.trained.all() and result.carried == 0 and result.carry_map is None
    assert np.array_equal(result.items, again.items) and np.array_equal(result.users, again.users)
    other = train(method, seed=1)
    assert not np.array_equal(result.items, other.items)
    # the scale edges score on: training pairs' median score 1, nothing near binary16's limit
    pair_scores = np.einsum("ij,ij->i", result.users[users], result.items[items])
    assert np.median(pair_scores) == pytest.approx(1.0, rel=1e-3)
    assert np.abs(result.items).max() < HALF_MAX / 100 and np.abs(result.users).max() < HALF_MAX / 100
    user_norm = np.linalg.norm(result.users, axis=1).mean()
    item_norm = np.linalg.norm(result.items, axis=1).mean()
    assert user_norm == pytest.approx(item_norm, rel=1e-3)
    if method == "bpr":  # implicit's item bias sits in the last coordinate, users' constant there
        assert np.allclose(result.users[:, -1], result.users[0, -1])


def test_only_seen_users_are_returned() -> None:
    users, items, weights, _, item_group = planted()
    users = users * 10 + 7  # sparse user numbering
    result = train_embeddings(
        users, items, weights, n_items=len(item_group), dim=DIM, previous=None, settings=TrainingSettings()
    )
    assert np.array_equal(result.user_rows, np.unique(users))
    assert result.users.shape == (len(np.unique(users)), DIM)


def test_items_without_interactions_keep_their_previous_vectors() -> None:
    users, items, weights, user_group, item_group = planted()
    before = train("als").items
    # Catalog grew by 4 rows; the first item of every group gets no interaction in the new window.
    quiet = np.flatnonzero(np.arange(len(item_group)) % ITEMS_PER_GROUP == 0)
    keep = ~np.isin(items, quiet)
    n_items = len(item_group) + 4
    result = train_embeddings(
        users[keep],
        items[keep],
        weights[keep],
        n_items=n_items,
        dim=DIM,
        previous=before,
        settings=TrainingSettings(iterations=30, seed=5),
    )
    assert result.items.shape == (n_items, DIM)
    assert result.carried == len(quiet)
    assert not result.trained[quiet].any()
    assert result.trained[: len(item_group)][~np.isin(np.arange(len(item_group)), quiet)].all()
    assert result.carry_map is not None
    assert np.allclose(result.items[quiet], before[quiet].astype(np.float64) @ result.carry_map, atol=1e-5)
    assert not result.items[len(item_group) :].any()  # new rows without interactions: 0
    # carried into the new space, a quiet item still scores highest with its own group's users
    scores = result.users @ result.items[quiet].T
    assert np.mean(item_group[quiet][scores.argmax(axis=1)] == user_group) >= 0.9
    # a previous user vector carried with the same map keeps its dot products with the carried rows
    old_user = np.ones((1, DIM), dtype=np.float32)
    moved = carry_users(old_user, result.carry_map)
    assert np.allclose(moved @ result.items[quiet].T, old_user @ before[quiet].T, rtol=1e-3, atol=1e-4)


def test_too_few_shared_rows_keep_previous_vectors_as_they_are() -> None:
    users, items, weights, _, item_group = planted()
    previous = np.zeros((len(item_group), DIM), dtype=np.float32)
    previous[:3] = np.arange(3 * DIM, dtype=np.float32).reshape(3, DIM)  # 3 rows known: no map
    keep = items >= 3
    result = train_embeddings(
        users[keep],
        items[keep],
        weights[keep],
        n_items=len(item_group),
        dim=DIM,
        previous=previous,
        settings=TrainingSettings(),
    )
    assert result.carry_map is None and result.carried == 3
    assert np.array_equal(result.items[:3], previous[:3])


def test_bad_input_is_refused_with_a_reason() -> None:
    users, items, weights, _, item_group = planted()
    n = len(item_group)
    settings = TrainingSettings()
    with pytest.raises(ValueError, match="item indices"):
        train_embeddings(users, items + n, weights, n_items=n, dim=DIM, previous=None, settings=settings)
    with pytest.raises(ValueError, match="no interactions"):
        empty = np.zeros(0)
        train_embeddings(empty, empty, empty, n_items=n, dim=DIM, previous=None, settings=settings)
    with pytest.raises(ValueError, match="weights"):
        train_embeddings(users, items, -weights, n_items=n, dim=DIM, previous=None, settings=settings)
    with pytest.raises(ValueError, match="previous item embeddings"):
        bad = np.zeros((n, DIM + 1), dtype=np.float32)
        train_embeddings(users, items, weights, n_items=n, dim=DIM, previous=bad, settings=settings)
    with pytest.raises(ValueError, match="at least 2"):
        TrainingSettings(method="bpr").factors_for(1)
    with pytest.raises(ValueError, match="method"):
        TrainingSettings(method="svd")
    with pytest.raises(ValueError, match="iterations"):
        TrainingSettings(iterations=0)


def test_without_implicit_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    # None in sys.modules makes `import implicit.cpu.als` raise ImportError, as when it is not installed.
    monkeypatch.setitem(sys.modules, "implicit.cpu.als", None)
    users, items, weights, _, _ = planted()
    n_items, settings = GROUPS * ITEMS_PER_GROUP, TrainingSettings()
    with pytest.raises(TrainingUnavailable) as caught:
        train_embeddings(users, items, weights, n_items=n_items, dim=DIM, previous=None, settings=settings)
    assert TRAIN_EXTRA_HINT in str(caught.value)


def test_interactions_from_events_weigh_decay_and_count_unknown_items() -> None:
    day = 86_400_000
    now = 100 * day
    events = [
        ("u2", "a", "purchase", now),
        ("u2", "a", "view", now),  # same pair: summed
        ("u1", "b", "add_to_cart", now - 30 * day),  # one half-life old
        ("u1", "zz", "purchase", now),  # not in the catalog
        ("u1", "zz", "view", now),
        ("", "a", "purchase", now),  # no user
        ("u3", "a", "remove_from_cart", now),  # not a weighted type
        ("u3", "b", "purchase", now + day),  # from the future: counts as new
    ]
    got = interactions_from_events(events, {"a": 0, "b": 1}, now_ms=now, half_life_days=30.0)
    assert got.user_ids == ("u1", "u2", "u3")
    assert got.users.tolist() == [0, 1, 2] and got.items.tolist() == [1, 0, 1]
    assert got.weights.tolist() == pytest.approx([0.25, 1.1, 1.0])
    assert got.events == 4 and dict(got.unknown_items) == {"zz": 2}
    flat = interactions_from_events(events, {"a": 0, "b": 1}, now_ms=now, event_weights={"view": 2.0})
    assert flat.user_ids == ("u2",) and flat.weights.tolist() == [2.0]
    with pytest.raises(ValueError, match="half_life_days"):
        interactions_from_events(events, {}, now_ms=now, half_life_days=0.0)
