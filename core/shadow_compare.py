"""How a shadow decision differs from the one served for the same request (docs/shadow.md).

A shadow rollout decides a sample of requests again with a candidate version, never serving the
result; `compare` tells, placement by placement (the two answers list the request's placements in the
same order), what would have changed:

- overlap@k of items, for placements with ranked items in both answers: |served ∩ candidate| divided by
  the longer list's length (1.0: the same items, in any order; 0.0: none in common);
- a variant change: the campaign, the experiment (or bandit) or its variant (or arm) differs. A bandit
  draws its arm at random on every decision, so even an identical candidate changes arms at the rate
  the bandit explores: compare it with that rate, not with 0;
- a new fallback: the candidate answers with a `fallback_reason` where the served answer has none;
  a fixed fallback, the other way round.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgewise.core.decisions import DecideResponse, FallbackReason, PlacementDecision

__all__ = ["Comparison", "compare", "overlap_at_k"]


@dataclass(frozen=True, slots=True)
class Comparison:
    """The differences of one request's two answers, summed over its placements."""

    placements: int = 0  # placements compared
    item_placements: int = 0  # placements with ranked items in both answers
    overlap_sum: float = 0.0  # sum of overlap@k over those
    variant_changes: int = 0
    new_fallbacks: int = 0
    fixed_fallbacks: int = 0


def overlap_at_k(served: list[str], candidate: list[str]) -> float:
    """|served ∩ candidate| / max(len(served), len(candidate)); 1.0 when both are empty."""
    longest = max(len(served), len(candidate))
    if longest == 0:
        return 1.0
    return len(set(served).intersection(candidate)) / longest


def _variant(decision: PlacementDecision) -> tuple[str, str, str]:
    return decision.campaign, decision.experiment_id, decision.variant_id


def compare(served: DecideResponse, candidate: DecideResponse) -> Comparison:
    """What the candidate's answer changes against the served one (placements matched in order; a
    placement only one of them has is not compared)."""
    item_placements = variant_changes = new_fallbacks = fixed_fallbacks = 0
    overlap_sum = 0.0
    pairs = list(zip(served.placements, candidate.placements, strict=False))
    for before, after in pairs:
        if before.items and after.items:
            item_placements += 1
            overlap_sum += overlap_at_k([i.id for i in before.items], [i.id for i in after.items])
        if _variant(before) != _variant(after):
            variant_changes += 1
        fell_before = before.fallback != FallbackReason.NONE
        fell_after = after.fallback != FallbackReason.NONE
        new_fallbacks += fell_after and not fell_before
        fixed_fallbacks += fell_before and not fell_after
    return Comparison(
        len(pairs), item_placements, overlap_sum, variant_changes, new_fallbacks, fixed_fallbacks
    )
