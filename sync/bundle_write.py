"""Writing bundles: `write_bundle` lays out a bundle directory in the format `edgewise.sync.bundle`
reads (docs/bundle-format.md).

Invariant: an interrupted write never leaves a valid-looking bundle. An existing bundle's manifest is
removed before its files are replaced, every file is fsynced, and the new manifest (with each file's
size and sha256) is written last, to a temporary name renamed into place. By default the result is read
back with `load_bundle`, so what `write_bundle` returns has passed the same validation an edge applies.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import numpy as np
from numpy.typing import ArrayLike

from edgewise.sync.bundle import (
    BUNDLE_FORMAT,
    FORMAT_VERSION,
    ITEM_DAILY_COUNTS,
    ITEM_EMBEDDINGS,
    ITEM_NEIGHBOR_SCORES,
    ITEM_NEIGHBORS,
    ITEM_POPULARITY,
    ITEMS,
    KNOWN_FILES,
    MANIFEST,
    POPULARITY_FILE,
    PROFILES,
    REQUIRED_FILES,
    RULES,
    SCHEMA,
    USER_EMBEDDINGS,
    bundle_dir_files,
    load_bundle,
    sha256_file,
)

__all__ = ["write_bundle"]


def _prepare_out_dir(root: Path) -> None:
    """Create `root`, or clear an existing bundle in it; refuse anything else."""
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"cannot write a bundle to {root}: it exists and is not a directory")
    root.mkdir(parents=True, exist_ok=True)
    present = bundle_dir_files(root)
    if not present:
        return
    if MANIFEST not in present:
        raise FileExistsError(
            f"cannot write a bundle to {root}: directory is not empty and not an edgewise bundle"
        )
    strangers = [
        name
        for name in present
        if name != MANIFEST and name not in KNOWN_FILES and not POPULARITY_FILE.match(name)
    ]
    if strangers:
        raise FileExistsError(
            f"cannot write a bundle to {root}: it holds files that are not bundle files: "
            f"{', '.join(strangers)}"
        )
    # drop the manifest first: from here until the new manifest lands the directory is not a bundle
    (root / MANIFEST).unlink()
    for name in present:
        if name != MANIFEST:
            (root / name).unlink()


def _write_file(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        write(fh)
        fh.flush()
        os.fsync(fh.fileno())


def _json_bytes(doc: Any) -> bytes:
    return (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def _write_jsonl(path: Path, records: Iterable[Mapping[str, Any]]) -> None:
    def write(fh: IO[bytes]) -> None:
        dumps = json.dumps
        batch: list[str] = []
        for record in records:
            batch.append(dumps(record, ensure_ascii=False, separators=(",", ":")))
            if len(batch) >= 4096:
                fh.write(("\n".join(batch) + "\n").encode("utf-8"))
                batch.clear()
        if batch:
            fh.write(("\n".join(batch) + "\n").encode("utf-8"))

    _write_file(path, write)


def _write_npy(path: Path, array: ArrayLike, dtype: str = "<f4") -> None:
    data = np.ascontiguousarray(array, dtype=dtype)
    _write_file(path, lambda fh: np.save(fh, data, allow_pickle=False))


def write_bundle(
    out: str | Path,
    *,
    version: int,
    schema: Mapping[str, Any],
    items: Iterable[Mapping[str, Any]],
    profiles: Iterable[Mapping[str, Any]],
    rules: Mapping[str, Any],
    item_embeddings: ArrayLike,
    item_popularity: ArrayLike,
    user_embeddings: ArrayLike | None = None,
    item_neighbors: ArrayLike | None = None,
    item_neighbor_scores: ArrayLike | None = None,
    item_daily_counts: ArrayLike | None = None,
    daily_counts_end: str | None = None,
    popularity_by_scope: Mapping[str, ArrayLike] | None = None,
    generator: str = "",
    created_at: str | None = None,
    validate: bool = True,
) -> Path:
    """Write a bundle directory at `out` and return its path.

    Arrays are stored as little-endian float32, `item_neighbors` as little-endian int32 (give it and
    `item_neighbor_scores` together or neither). `out` is created if needed; an existing non-empty
    directory is only accepted if it is an edgewise bundle, whose files are then replaced. The manifest
    is written last (temp file + rename), so an interrupted write never leaves a valid-looking bundle.
    With `validate` (the default) the result is read back with `load_bundle`, raising BundleError.
    """
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"bundle version must be a positive integer, got {version!r}")
    if (item_neighbors is None) != (item_neighbor_scores is None):
        raise ValueError("item_neighbors and item_neighbor_scores go together: give both or neither")
    root = Path(out)
    _prepare_out_dir(root)
    _write_file(root / SCHEMA, lambda fh: fh.write(_json_bytes(schema)))
    _write_jsonl(root / ITEMS, items)
    _write_jsonl(root / PROFILES, profiles)
    _write_file(root / RULES, lambda fh: fh.write(_json_bytes(rules)))
    _write_npy(root / ITEM_EMBEDDINGS, item_embeddings)
    _write_npy(root / ITEM_POPULARITY, item_popularity)
    names = list(REQUIRED_FILES)
    if user_embeddings is not None:
        _write_npy(root / USER_EMBEDDINGS, user_embeddings)
        names.append(USER_EMBEDDINGS)
    if item_neighbors is not None and item_neighbor_scores is not None:
        _write_npy(root / ITEM_NEIGHBORS, item_neighbors, "<i4")
        _write_npy(root / ITEM_NEIGHBOR_SCORES, item_neighbor_scores)
        names += [ITEM_NEIGHBORS, ITEM_NEIGHBOR_SCORES]
    if item_daily_counts is not None:
        _write_npy(root / ITEM_DAILY_COUNTS, item_daily_counts)
        names.append(ITEM_DAILY_COUNTS)
    for scope, array in (popularity_by_scope or {}).items():
        kind, _, key = scope.partition(":")
        name = f"models/popularity/{kind}-{key}.npy"
        if not POPULARITY_FILE.match(name):
            raise ValueError(f"popularity scope must be country:<CC> or segment:<id>, got {scope!r}")
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        _write_npy(root / name, array)
        names.append(name)
    manifest: dict[str, Any] = {
        "format": BUNDLE_FORMAT,
        "format_version": FORMAT_VERSION,
        "bundle_version": version,
        "created_at": created_at or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "generator": generator,
        **({"daily_counts_end": daily_counts_end} if daily_counts_end else {}),
        "files": {
            name: {"sha256": sha256_file(root / name), "bytes": (root / name).stat().st_size}
            for name in names
        },
    }
    tmp = root / f".{MANIFEST}.tmp"
    _write_file(tmp, lambda fh: fh.write(_json_bytes(manifest)))
    os.replace(tmp, root / MANIFEST)
    _fsync_dir(root)
    if validate:
        load_bundle(root)
    return root


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
