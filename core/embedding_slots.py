"""Embedding generations: which of a profile's stored vectors the edge uses, and where a refresh writes.

Item and user vectors live in one factor space per training run, a *generation*: the bundle's are
generation 0, each embeddings refresh of the control plane makes the next one
(sync/embedding_refresh.py). The active generation is the model record `models/embedding_generation`, a
1-row int32 array committed in the same commit as the `models/item_embeddings` of that generation (absent:
0). A profile record holds up to two vectors, each tagged with its generation (docs/bundle-format.md):

    e, eg    the first slot: a vector (float32 little-endian bytes, or nil) and its generation (absent: 0)
    n, ng    the second slot, when there is one: a vector and its generation (both present, or neither)

A record of generation 0 alone is written as before generations existed (`e` only), so bundles and their
digests are unchanged. A refresh stages the users' vectors of generation G in the slot that does not
hold the active generation's, in paced commits, while the edge keeps using the active one; one commit
then switches `item_embeddings` and `embedding_generation` together, and from that version on the
edge uses the generation-G slot. A profile with no vector of the active generation has none: the edge
ranks by the mean of recent views or falls back (a personalization miss, never an error).

`vector_for` is the one place that chooses: `core.records.decode_profile` calls it, so
`ProfileRecord.embedding` is already the active generation's vector wherever it is read.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "GENERATION_MODEL",
    "MAX_GENERATION",
    "Slot",
    "active_generation",
    "encode_generation",
    "slot_with",
    "vector_for",
    "with_active_vector",
]

GENERATION_MODEL: Final = "embedding_generation"  # models/embedding_generation
MAX_GENERATION: Final = 2**31 - 1  # stored as int32

Slot = tuple[int, bytes | None]  # (generation, vector)


def vector_for(slots: Sequence[Slot], generation: int) -> bytes | None:
    """The vector of `generation` among `slots` (None: no slot of that generation, or its vector is nil)."""
    for slot_generation, vector in slots:
        if slot_generation == generation:
            return vector
    return None


def slot_with(slots: Sequence[Slot], generation: int, vector: bytes | None, keep: int) -> tuple[Slot, ...]:
    """The slots after writing `generation`'s vector: the slot of generation `keep` stays (first, where it
    was), the written one replaces any other. A refresh staging generation G keeps the active
    generation's slot (`keep` = active); a push that sets a user's vector of the active generation keeps
    the slot a refresh may be staging (`keep` = the other slot's generation)."""
    kept = [slot for slot in slots if slot[0] == keep and keep != generation][:1]
    return (*kept, (generation, vector))


def with_active_vector(slots: Sequence[Slot], active: int, vector: bytes | None) -> tuple[Slot, ...]:
    """The slots after a push or a fold sets the `active` generation's vector: the slot of another
    generation (one a refresh may be staging) is kept."""
    staged = next((generation for generation, _ in slots if generation != active), -1)
    return slot_with(slots, active, vector, keep=staged)


def encode_generation(generation: int) -> NDArray[np.int32]:
    """The `models/embedding_generation` array of `generation`."""
    if not 0 <= generation <= MAX_GENERATION:
        raise ValueError(f"embedding generation {generation} is not in 0..{MAX_GENERATION}")
    return np.array([generation], dtype="<i4")


def active_generation(array: NDArray[np.generic] | None) -> int:
    """The generation a `models/embedding_generation` array names (None, or not one int >= 0: 0)."""
    if array is None or array.ndim != 1 or array.shape[0] != 1 or array.dtype.kind != "i":
        return 0
    return max(int(array[0]), 0)
