"""Turning a validated bundle into store records, and applying it to a store in one transaction."""

from __future__ import annotations

import time
from collections.abc import Iterator

import msgpack

from edgewise.core.records import ItemRecord, ProfileRecord, encode_array, encode_item, encode_profile
from edgewise.core.saved_groups import (
    MEMBER_VALUE,
    SUMMARY_PREFIX,
    declarations,
    inline_members,
    member_key,
    pack_summary,
    summarize,
)
from edgewise.core.snapshot_info import SnapshotInfo
from edgewise.core.store import Change, ReadView, Store
from edgewise.core.version_state import build_state
from edgewise.sync.bundle import Bundle, BundleError

__all__ = ["apply_bundle", "snapshot_info"]


def _item_records(bundle: Bundle, version: int) -> Iterator[tuple[bytes, bytes]]:
    """Item id -> encoded item record, each with record version `version`."""
    for row, item in enumerate(bundle.items):
        record = ItemRecord(
            item.id,
            version,
            row,
            item.category,
            item.tags,
            item.price,
            item.regions,
            item.launch_date,
            item.flags,
        )
        yield item.id.encode(), encode_item(record)


def _profile_records(bundle: Bundle, version: int) -> Iterator[tuple[bytes, bytes]]:
    """Profile id -> encoded profile record (with its user embedding), each with record version `version`."""
    users = bundle.user_embeddings
    for row, profile in enumerate(bundle.profiles):
        embedding = users[row].tobytes() if users is not None else None
        record = ProfileRecord(profile.id, version, profile.attributes, profile.consent, embedding)
        yield profile.id.encode(), encode_profile(record)


def _model_records(bundle: Bundle) -> Iterator[tuple[bytes, bytes]]:
    """Model name -> encoded array; every array is per item (row = item row)."""
    yield b"item_embeddings", encode_array(bundle.item_embeddings)
    yield b"item_popularity", encode_array(bundle.item_popularity)
    if bundle.item_neighbors is not None and bundle.item_neighbor_scores is not None:
        yield b"item_neighbors", encode_array(bundle.item_neighbors)
        yield b"item_neighbor_scores", encode_array(bundle.item_neighbor_scores)
    for name, array in bundle.extra_models.items():
        yield name.encode(), encode_array(array)


def _rules_records(bundle: Bundle) -> Iterator[tuple[bytes, bytes]]:
    """The `rules` namespace: the rules document (saved groups declared, without their values) and the
    schema document, msgpack; then one record per saved group member (core/saved_groups.py)."""
    yield b"rules", msgpack.packb(declarations(bundle.rules_doc), use_bin_type=True)
    yield b"schema", msgpack.packb(bundle.schema, use_bin_type=True)
    for gid, values in inline_members(bundle.rules_doc).items():
        keys = sorted({member_key(gid, value) for value in values})
        for key in keys:
            yield key.encode(), MEMBER_VALUE
        if keys:
            yield f"{SUMMARY_PREFIX}{gid}".encode(), pack_summary(summarize(keys))


def snapshot_info(bundle: Bundle, manifest_sha256: str = "") -> SnapshotInfo:
    manifest = bundle.manifest
    return SnapshotInfo(
        version=bundle.version,
        source="bundle",
        loaded_at_ms=int(time.time() * 1000),
        daily_counts_end_ms=bundle.daily_counts_end_ms,
        manifest_sha256=manifest_sha256,
        bundle_path=str(bundle.path),
        created_at=manifest.get("created_at", ""),
        generator=manifest.get("generator", ""),
        items=len(bundle.items),
        profiles=len(bundle.profiles),
        dim=bundle.dim,
        models=(
            "item_embeddings",
            "item_popularity",
            *(("item_neighbors", "item_neighbor_scores") if bundle.item_neighbors is not None else ()),
            *bundle.extra_models,
        ),
    )


def _bundle_changes(bundle: Bundle) -> Iterator[Change]:
    """Every replicated record of the bundle, as changes of a snapshot."""
    for key, value in _profile_records(bundle, bundle.version):
        yield "profiles", key, value
    for key, value in _item_records(bundle, bundle.version):
        yield "items", key, value
    for key, value in _model_records(bundle):
        yield "models", key, value
    for key, value in _rules_records(bundle):
        yield "rules", key, value


def _check_state(view: ReadView) -> None:
    """The check a bundle load commits under: the state it makes builds a version state (as workers will)."""
    try:
        build_state(view)
    except Exception as exc:  # whatever stops it, the node keeps serving its last state
        raise BundleError(".", f"its records do not make a servable state, nothing applied: {exc}") from exc


def apply_bundle(store: Store, bundle: Bundle, manifest_sha256: str = "") -> SnapshotInfo:
    """Replace the store's replicated data with `bundle` in one write transaction, as a snapshot
    (`Store.apply_replicated`), and return its info. Raises BundleError, with nothing changed, when the
    state it makes does not build (`core.version_state.build_state`)."""
    info = snapshot_info(bundle, manifest_sha256)
    store.apply_replicated(
        bundle.version, _bundle_changes(bundle), snapshot=True, info=info, check=_check_state
    )
    return info
