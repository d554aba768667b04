"""The control store as the central tier's materialized view (no NATS needed): the commit hook a replica
publishes through, a commit applied verbatim on another store, a snapshot installed (docs/central.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgewise.sync.control_store import (
    CommitInfo,
    ControlStore,
    ControlStoreError,
    RecordChange,
    RolloutWritten,
)
from tests.sync_support import control_state_digest

Published = tuple[CommitInfo, list[RecordChange], int, dict[str, int]]


def _recording(store: ControlStore) -> list[Published]:
    log: list[Published] = []

    def hook(
        info: CommitInfo,
        changes: list[RecordChange],
        position: int,
        cursors: dict[str, int],
        rollout: RolloutWritten | None = None,
    ) -> int:
        log.append((info, list(changes), position + 1, dict(cursors)))
        return position + 1

    store.on_commit = hook
    return log


def _state(store: ControlStore) -> tuple[tuple[int, str], list[tuple[int, str, str]], dict[str, int]]:
    history = [(c.version, c.kind, c.description) for c in store.history(100)]
    return control_state_digest(store), history, store.forgotten()


def test_commits_published_by_one_store_rebuild_it_on_another(tmp_path: Path) -> None:
    with ControlStore(tmp_path / "a") as a, ControlStore(tmp_path / "b") as b:
        b.adopt_lineage(a.lineage)
        published = _recording(a)
        records = [RecordChange("profiles", f"u{i}", b"p%d" % i) for i in range(5)]
        records += [RecordChange("items", "i1", b"item"), RecordChange("rules", "rules", b"r")]
        a.replace_all(records, kind="push", description="bundle")
        a.commit([RecordChange("items", "i2", b"item2"), RecordChange("profiles", "u1", None)], kind="delta")
        a.commit_at([RecordChange("profiles", "u2", b"folded")], kind="delta", cursor="profiles", position=42)
        a.forget("u3")
        assert [p[0].kind for p in published] == ["push", "delta", "delta", "forget"]
        assert published[2][3] == {"profiles": 42}
        for info, changes, position, cursors in published:
            assert b.apply_commit(info, changes, position, cursors)
            assert not b.apply_commit(info, changes, position, cursors)  # delivered again: skipped
        assert _state(b) == _state(a)
        assert b.cursor("profiles") == 42 == a.cursor("profiles")
        assert b.replicated_position() == a.replicated_position() == 4
        assert b.forgotten_version("u3") == a.forgotten_version("u3") is not None


def test_a_hook_that_raises_leaves_nothing(tmp_path: Path) -> None:
    with ControlStore(tmp_path / "a") as a:

        def refuse(
            info: CommitInfo,
            changes: list[RecordChange],
            position: int,
            cursors: dict[str, int],
            rollout: RolloutWritten | None = None,
        ) -> int:
            raise RuntimeError("the log moved on")

        a.on_commit = refuse
        with pytest.raises(RuntimeError):
            a.commit([RecordChange("items", "i1", b"x")], kind="delta")
        assert a.head_version() == 0 and a.replicated_position() == 0
        with a.read() as view:
            assert view.get("items", "i1") is None


def test_a_commit_that_does_not_continue_the_head_is_refused(tmp_path: Path) -> None:
    with ControlStore(tmp_path / "a") as a, ControlStore(tmp_path / "b") as b:
        published = _recording(a)
        a.commit([RecordChange("items", "i1", b"x")], kind="delta")
        a.commit([RecordChange("items", "i2", b"y")], kind="delta")
        info, changes, position, cursors = published[1]
        with pytest.raises(ControlStoreError, match="diverged"):
            b.apply_commit(info, changes, position, cursors)


def test_an_image_installed_elsewhere_is_the_same_state(tmp_path: Path) -> None:
    with ControlStore(tmp_path / "a") as a, ControlStore(tmp_path / "c") as c:
        _recording(a)
        a.replace_all([RecordChange("profiles", f"u{i}", b"v") for i in range(3)], kind="push")
        a.forget("u1")
        c.commit([RecordChange("items", "stray", b"z")], kind="delta")  # replaced whole
        position, commits, forgotten, records = a.image()
        c.install_snapshot(
            lineage=a.lineage, commits=commits, records=records, forgotten=forgotten, position=position
        )
        assert c.lineage == a.lineage
        assert control_state_digest(c) == control_state_digest(a)
        assert c.forgotten() == a.forgotten() and c.replicated_position() == position
        assert c.log_start_version() == c.head_version() == a.head_version()
        with pytest.raises(ControlStoreError, match="not empty"):
            c.adopt_lineage("other")
