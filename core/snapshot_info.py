"""What a store's replicated data came from: the snapshot info recorded with every replicated apply.

The store keeps it in `meta` ("snapshot") as a msgpack map with string keys, the fields below by name
(stores and edgewise versions before this class wrote the same map). A field at its default is left out
of the map and read back as the default; keys this version does not know are kept in `extra` as read, and
written back with the info (a control plane delta carries the previous info forward).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Final

import msgpack

__all__ = ["SnapshotInfo"]


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    """The snapshot a store serves: its version, where it came from and when this node applied it."""

    version: int = 0  # bundle_version of a bundle, the commit version of a control plane's commit
    source: str = ""  # "bundle" or "control"; "" for none
    loaded_at_ms: int = 0  # when this node applied it (Unix ms)
    daily_counts_end_ms: int = 0  # the day the last column of `item_daily_counts` counts (0: none)
    # A bundle load (sync/snapshot.py)
    manifest_sha256: str = ""  # of the bundle's manifest.json: a reload of the same bundle does nothing
    bundle_path: str = ""
    created_at: str = ""  # the manifest's
    generator: str = ""  # the manifest's
    items: int = 0
    profiles: int = 0
    dim: int = 0  # embedding dimension
    models: tuple[str, ...] = ()  # the model arrays loaded
    # A control plane's commits (sync/edge_sync.py)
    control: str = ""  # the control plane's address
    shard: str = "all"  # the shard of the profiles this node holds
    lineage: str = ""  # the control store's lineage: a delta applies only on data of the same lineage
    commit_kind: str = ""  # kind of the last commit applied ("snapshot", "push", "forget", ...)
    bundle_version: int = 0  # of the bundle the control plane's state came from (its manifest record)
    # keys of the map this version does not know, as read
    extra: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def encode(self) -> bytes:
        """The msgpack map stored in `meta`: the fields not at their defaults, and `extra`."""
        doc: dict[str, Any] = dict(self.extra)
        for spec in _FIELDS:
            value = getattr(self, spec.name)
            if value != spec.default:
                doc[spec.name] = value
        packed: bytes = msgpack.packb(doc, use_bin_type=True)
        return packed

    @classmethod
    def decode(cls, raw: bytes | memoryview) -> SnapshotInfo:
        """Read a stored map (of this version or an older one); raise ValueError when it is not one."""
        doc = msgpack.unpackb(raw, raw=False)
        if not isinstance(doc, dict):
            raise ValueError(f"snapshot info is not a map: {type(doc).__name__}")
        return cls.from_map(doc)

    @classmethod
    def from_map(cls, doc: Mapping[str, Any]) -> SnapshotInfo:
        """The info of a decoded map: missing (or null) keys take the defaults, unknown keys go to `extra`."""
        return cls(
            version=_int(doc, "version"),
            source=_str(doc, "source"),
            loaded_at_ms=_int(doc, "loaded_at_ms"),
            daily_counts_end_ms=_int(doc, "daily_counts_end_ms"),
            manifest_sha256=_str(doc, "manifest_sha256"),
            bundle_path=_str(doc, "bundle_path"),
            created_at=_str(doc, "created_at"),
            generator=_str(doc, "generator"),
            items=_int(doc, "items"),
            profiles=_int(doc, "profiles"),
            dim=_int(doc, "dim"),
            models=tuple(str(name) for name in doc.get("models") or ()),
            control=_str(doc, "control"),
            shard=_str(doc, "shard", "all"),
            lineage=_str(doc, "lineage"),
            commit_kind=_str(doc, "commit_kind"),
            bundle_version=_int(doc, "bundle_version"),
            extra={key: value for key, value in doc.items() if key not in _NAMES},
        )


_FIELDS: Final = tuple(spec for spec in fields(SnapshotInfo) if spec.name != "extra")
_NAMES: Final = frozenset(spec.name for spec in _FIELDS)


def _int(doc: Mapping[str, Any], key: str) -> int:
    value = doc.get(key)
    return 0 if value is None else int(value)


def _str(doc: Mapping[str, Any], key: str, default: str = "") -> str:
    value = doc.get(key)
    return default if value is None else str(value)
