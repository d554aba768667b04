"""A contextual bandit on an Open Bandit Dataset log: feature vectors, learning, choice probabilities.

The policy is the edge's (`edgewise.core.linear_bandits`): a contextual bandit document whose arms are
the log's items ("0".."A-1"). Its features read the log's columns as custom request attributes:
`context.attributes.<column>` (e.g. user_feature_0, the hashed user features) and
`context.attributes.position` (1-based), so one document serves both the edge and this evaluation.

`learn` fits the arms' A and b on the training rows through the control plane's code
(`LinearStats`: each row an exposure of its item with its vector, a click a reward;
`update_linear_bandit_doc`). `action_dist` gives pi_e(item | x_i, position_i) per evaluation row,
placed at the row's position of an (n, A, P) array, what `edgewise.core.ope` reads. Each position is
chosen independently from the softmax for that position: a slate with the same item twice is possible,
which the three-slot widget would not show (the same simplification as a per-position policy).
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from edgewise.core.features import MISSING
from edgewise.core.linear_bandit_learning import LinearStats, update_linear_bandit_doc
from edgewise.core.linear_bandits import LinearBanditPolicy, compile_linear_bandit
from edgewise.core.records import Activity

__all__ = [
    "USER_FEATURES",
    "NoSegments",
    "RowSource",
    "action_dist",
    "default_doc",
    "learn",
    "read_rows",
    "vectors",
]

USER_FEATURES: Final = ("user_feature_0", "user_feature_1", "user_feature_2", "user_feature_3")


class RowSource:
    """One log row as a feature source: its columns are the request's custom attributes."""

    __slots__ = ("_row",)
    now_ms = 0
    activity: Activity | None = None

    def __init__(self, row: Mapping[str, str]) -> None:
        self._row = row

    def get(self, path: tuple[str, ...]) -> Any:
        if len(path) == 3 and path[0] == "context" and path[1] == "attributes":
            value = self._row.get(path[2])
            return MISSING if value is None or value == "" else value
        return MISSING

    def item_category(self, item_id: str) -> str | None:
        return None

    def replenish_days(self, item_id: str) -> float | None:
        return None


class NoSegments:
    """A segment source in which no segment matches (logged rows and simulations carry none)."""

    def matches(self, segment_id: str) -> bool:
        return False


def read_rows(path: str | Path) -> list[dict[str, str]]:
    """Every row of an OBD CSV as column -> text (position as written, 1-based)."""
    with Path(path).open(newline="", encoding="utf-8") as f:
        return [dict(row) for row in csv.DictReader(f)]


def default_doc(
    rows: Sequence[Mapping[str, str]], n_items: int, *, min_count: int = 20, **params: float
) -> dict[str, Any]:
    """A contextual bandit document for an OBD log: one-hot user features (the values seen at least
    `min_count` times in `rows`) and the position; one arm per item."""
    context: list[dict[str, Any]] = []
    for column in USER_FEATURES:
        counts = Counter(row.get(column, "") for row in rows)
        values = sorted(v for v, c in counts.items() if v and c >= min_count)
        if values:
            context.append({"path": f"context.attributes.{column}", "values": values})
    positions = sorted({row["position"] for row in rows})
    context.append({"path": "context.attributes.position", "values": positions})
    return {"context": context, "arms": [{"id": str(i)} for i in range(n_items)], **params}


def vectors(policy: LinearBanditPolicy, rows: Sequence[Mapping[str, str]]) -> list[list[float]]:
    none = NoSegments()
    return [policy.vector(RowSource(row), none, None) for row in rows]


def learn(
    doc: Mapping[str, Any],
    rows: Sequence[Mapping[str, str]],
    actions: NDArray[np.int64],
    rewards: NDArray[np.float64],
) -> dict[str, Any]:
    """The document with A and b learned from `rows` (each an exposure of its item; a click rewards it)."""
    policy = compile_linear_bandit(doc, "bandits.obd")
    stats = LinearStats(max_exposures=max(1, len(rows)))
    for i, x in enumerate(vectors(policy, rows)):
        eid = f"row{i}"
        stats.add_exposure(eid, "obd", str(int(actions[i])), np.array(x))
        if rewards[i] > 0:
            stats.add_reward(eid)
    return update_linear_bandit_doc(doc, stats.take(), bandit_id="obd")


def action_dist(
    policy: LinearBanditPolicy,
    rows: Sequence[Mapping[str, str]],
    positions: NDArray[np.int64],
    n_positions: int,
) -> NDArray[np.float64]:
    """pi_e(. | x_i, p_i) as an (n, A, P) array: the policy's probabilities for row i at its position p_i
    (the other positions' columns repeat it; `edgewise.core.ope` reads only p_i)."""
    probs = np.array([policy.probabilities(x) for x in vectors(policy, rows)])
    out = np.repeat(probs[:, :, None], n_positions, axis=2)
    del positions  # the row's vector already encodes its position
    return out
