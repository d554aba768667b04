"""Bandit learning (edgewise.core.bandit_learning): counting exposures and rewards once, posterior
updates (prior, decay, clamping, segments), rules documents that still compile, the publish schedule,
and closed-loop simulations with the real policy converging to the best arm."""

from __future__ import annotations

import copy
import json
import math
from typing import Any

import pytest

from edgewise.bench.bandit_learning import simulate
from edgewise.core.attribution import Attributed, Exposure, Outcome, attribute
from edgewise.core.bandit_learning import (
    ArmCounts,
    BanditCounts,
    BanditStats,
    LearningSchedule,
    exposure_id,
    posterior_means,
    rules_delta_line,
    update_bandit_doc,
    update_rules_doc,
)
from edgewise.core.bandits import MAX_SHAPE, MIN_SHAPE, BanditError, compile_bandit
from edgewise.core.rules import compile_rules

T0 = 1_700_000_000_000


def rules_doc() -> dict[str, Any]:
    return {
        "segments": {"deal_seekers": {"condition": {"profile.needs": {"$in": ["deal_seeker"]}}}},
        "contents": {
            "promo_default": {"title": "default"},
            "promo_ship": {"title": "free shipping"},
            "promo_ten": {"title": "10% off"},
        },
        "bandits": {
            "promo": {
                "exploration_floor": 0.05,
                "arms": [
                    {"id": "ship", "content_id": "promo_ship", "alpha": 3, "beta": 40},
                    {"id": "ten", "content_id": "promo_ten", "alpha": 1, "beta": 1},
                ],
                "segments": {
                    "deal_seekers": {
                        "arms": [{"id": "ship", "alpha": 1, "beta": 1}, {"id": "ten", "alpha": 2, "beta": 9}]
                    }
                },
            },
            "other": {"arms": [{"id": "x", "content_id": "promo_default", "alpha": 1, "beta": 1}]},
        },
        "placements": {
            "promo_slot": {
                "kind": "content",
                "default_content": "promo_default",
                "campaigns": [{"id": "promo", "serve": {"bandit": "promo"}}],
            }
        },
    }


def arm(doc: dict[str, Any], arm_id: str, segment: str | None = None) -> tuple[float, float]:
    spec = doc if segment is None else doc["segments"][segment]
    body = next(a for a in spec["arms"] if a["id"] == arm_id)
    return body["alpha"], body["beta"]


def expo(
    decision: str, variant: str, *, experiment: str = "promo", ts: int = T0, unit: str = "u1"
) -> Exposure:
    return Exposure(decision, unit, "promo_slot", "promo", experiment, variant, 0.5, (), ts)


def outcome(event: str, decision: str, *, type_: str = "click", ts: int = T0 + 1000) -> Outcome:
    return Outcome(event, type_, "u1", decision, "promo_slot", "", 0.0, ts)


# --- counting ---------------------------------------------------------------------------------------


def test_counts_each_exposure_and_reward_once() -> None:
    stats = BanditStats()
    assert stats.add_exposure("d1:p", "promo", "ship")
    assert not stats.add_exposure("d1:p", "promo", "ship")  # duplicate delivery
    assert not stats.add_exposure("d1:p", "promo", "ten")  # same id, whatever it claims
    assert stats.add_exposure("d2:p", "promo", "ship")
    assert stats.add_reward("d1:p", "click")
    assert not stats.add_reward("d1:p", "click")  # a second click on the same exposure
    assert not stats.add_reward("d1:p", "purchase")  # not a reward type
    assert not stats.add_reward("unknown:p", "click")  # no such exposure
    assert stats.pending().get("promo", None, "ship") == ArmCounts(2, 1)
    assert (stats.new_exposures, stats.new_rewards) == (2, 1)


def test_several_reward_types_reward_an_exposure_at_most_once() -> None:
    stats = BanditStats(reward_types={"click", "purchase"})
    stats.add_exposure("d1:p", "promo", "ship")
    assert stats.add_reward("d1:p", "click")
    assert not stats.add_reward("d1:p", "purchase")  # already rewarded: the reward stays Bernoulli
    assert not stats.add_reward("d1:p", "purchase")
    assert stats.pending().get("promo", None, "ship") == ArmCounts(1, 1)
    by_type = stats.rewards_by_type()
    assert by_type[(("promo", None, "ship"), "click")] == 1
    assert by_type[(("promo", None, "ship"), "purchase")] == 1


def test_attributed_outcomes_duplicates_and_other_experiments() -> None:
    exposures = [expo("d1", "ship"), expo("d1", "ship"), expo("d2", "ten"), expo("e1", "b", experiment="exp")]
    outcomes = [
        outcome("o1", "d1"),
        outcome("o1", "d1"),  # the same event twice
        outcome("o2", "d1"),  # a second click on d1
        outcome("o3", "d2", type_="add_to_cart"),  # not a reward type
        outcome("o4", "e1"),  # an experiment, not a bandit
        outcome("o5", "zz", ts=T0 - 1000),  # before every exposure: unattributed
    ]
    stats = BanditStats(bandit_ids={"promo"})
    for e in exposures:
        stats.add_exposure(exposure_id(e), e.experiment, e.variant)
    attributed = attribute(outcomes, exposures)
    results = [stats.add_attributed(a) for a in attributed]
    assert results.count(True) == 1
    counts = stats.take()
    assert counts.get("promo", None, "ship") == ArmCounts(1, 1)
    assert counts.get("promo", None, "ten") == ArmCounts(1, 0)
    assert counts.bandits() == {"promo"}
    assert (counts.impressions, counts.rewards) == (2, 1)


def test_attributed_reward_registers_its_exposure_once() -> None:
    stats = BanditStats(bandit_ids={"promo"})
    e = expo("d1", "ship")
    a = Attributed(outcome("o1", "d1"), e, "decision_id")
    assert stats.add_attributed(a, segment="deal_seekers")
    assert not stats.add_attributed(a, segment="deal_seekers")
    assert not stats.add_exposure(exposure_id(e), "promo", "ship", "deal_seekers")  # arrives late: known
    assert not stats.add_attributed(Attributed(outcome("o9", ""), None, "unattributed"))
    assert stats.pending().get("promo", "deal_seekers", "ship") == ArmCounts(1, 1)
    # Without bandit_ids the exposure must be known first.
    plain = BanditStats()
    assert not plain.add_attributed(a)
    plain.add_exposure(exposure_id(e), "promo", "ship")
    assert plain.add_attributed(a)


def test_exposure_records() -> None:
    stats = BanditStats()
    record = {"k": "exposure", "id": "d1:promo_slot", "x": "promo", "v": "ship", "st": "bandit", "pr": 0.4}
    # The segment whose posteriors served (bs) picks the posteriors counted; "" or absent: the global ones.
    assert stats.add_exposure_record({**record, "bs": "deal_seekers"})
    assert not stats.add_exposure_record({**record, "bs": "deal_seekers"})
    assert stats.add_exposure_record({**record, "id": "d4:promo_slot", "bs": ""})
    assert stats.add_exposure_record({**record, "id": "d5:promo_slot"})
    assert not stats.add_exposure_record({**record, "id": "d2:promo_slot", "st": "experiment"})
    assert not stats.add_exposure_record({**record, "id": "d3:promo_slot", "x": ""})
    assert stats.pending().get("promo", "deal_seekers", "ship") == ArmCounts(1, 0)
    assert stats.pending().get("promo", None, "ship") == ArmCounts(2, 0)


def test_take_resets_the_batch_but_remembers_exposures() -> None:
    stats = BanditStats()
    stats.add_exposure("d1:p", "promo", "ship")
    first = stats.take()
    assert first.get("promo", None, "ship") == ArmCounts(1, 0)
    assert stats.pending().arms == {}
    assert not stats.add_exposure("d1:p", "promo", "ship")  # re-delivered after the publish
    assert stats.add_reward("d1:p")  # a late click
    late = stats.take()
    assert late.get("promo", None, "ship") == ArmCounts(0, 1)
    assert stats.totals().get("promo", None, "ship") == ArmCounts(1, 1)


def test_late_reward_gives_the_same_posterior_as_counting_at_once() -> None:
    doc = rules_doc()["bandits"]["promo"]
    once = update_bandit_doc(doc, BanditCounts({("promo", None, "ship"): ArmCounts(1, 1)}), bandit_id="promo")
    stepwise = update_bandit_doc(
        update_bandit_doc(doc, BanditCounts({("promo", None, "ship"): ArmCounts(1, 0)}), bandit_id="promo"),
        BanditCounts({("promo", None, "ship"): ArmCounts(0, 1)}),
        bandit_id="promo",
    )
    assert arm(once, "ship") == arm(stepwise, "ship") == (4.0, 40.0)


def test_memory_bound_drops_the_oldest_exposures() -> None:
    stats = BanditStats(max_exposures=2)
    for i in range(3):
        stats.add_exposure(f"d{i}:p", "promo", "ship")
    assert stats.exposures_held() == 2
    assert not stats.add_reward("d0:p")  # forgotten
    assert stats.add_reward("d2:p")


# --- updating documents -----------------------------------------------------------------------------


def test_update_from_the_prior_adds_the_counts() -> None:
    doc = {"arms": [{"id": "a", "alpha": 1, "beta": 1}, {"id": "b", "alpha": 1, "beta": 1}]}
    counts = BanditCounts({("bx", None, "a"): ArmCounts(100, 7), ("bx", None, "b"): ArmCounts(10, 0)})
    new = update_bandit_doc(doc, counts, bandit_id="bx")
    assert arm(new, "a") == (8.0, 94.0)
    assert arm(new, "b") == (1.0, 11.0)
    prior = update_bandit_doc(doc, counts, bandit_id="bx", prior=(2.0, 30.0))  # doc excess is below prior
    assert arm(prior, "a") == (8.0, 94.0)  # decay 1: previous posterior kept, counts added
    assert update_bandit_doc(doc, counts, bandit_id="other") == doc  # counts of another bandit


def test_decay_shrinks_the_previous_evidence_towards_the_prior() -> None:
    doc = {"arms": [{"id": "a", "alpha": 101, "beta": 901}]}
    counts = BanditCounts({("b", None, "a"): ArmCounts(10, 5)})
    new = update_bandit_doc(doc, counts, bandit_id="b", decay=0.5)
    assert arm(new, "a") == (1 + 50 + 5, 1 + 450 + 5)
    forget = update_bandit_doc(doc, counts, bandit_id="b", decay=0.0)
    assert arm(forget, "a") == (6.0, 6.0)
    idle = update_bandit_doc(doc, BanditCounts(), bandit_id="b", decay=0.9)
    assert arm(idle, "a") == pytest.approx((91.0, 811.0))


def test_clamping_keeps_shapes_in_range_and_the_mean_at_the_top() -> None:
    doc = {"arms": [{"id": "a", "alpha": 1, "beta": 1}, {"id": "b", "alpha": 1, "beta": 1}]}
    counts = BanditCounts({("b", None, "a"): ArmCounts(4000, 1000), ("b", None, "b"): ArmCounts(0, 5)})
    new = update_bandit_doc(doc, counts, bandit_id="b", max_shape=1000.0)
    a, b = arm(new, "a")
    assert max(a, b) == 1000.0 and a / (a + b) == pytest.approx(1001 / 4002)
    a, b = arm(new, "b")  # rewards beyond impressions (late rewards): beta would go below 0
    assert b == MIN_SHAPE and a == 6.0
    compile_bandit(new, "bandits.b")


def test_per_segment_updates_and_unknown_segments_go_global() -> None:
    doc = rules_doc()["bandits"]["promo"]
    counts = BanditCounts(
        {
            ("promo", "deal_seekers", "ten"): ArmCounts(20, 4),
            ("promo", None, "ship"): ArmCounts(10, 1),
            ("promo", "vip", "ship"): ArmCounts(5, 1),  # not a segment of this bandit: served globally
        }
    )
    new = update_bandit_doc(doc, counts, bandit_id="promo")
    assert arm(new, "ten", "deal_seekers") == (6.0, 25.0)
    assert arm(new, "ship", "deal_seekers") == (1.0, 1.0)
    assert arm(new, "ship") == (5.0, 53.0)
    assert arm(new, "ten") == (1.0, 1.0)
    assert new["exploration_floor"] == 0.05
    assert new["arms"][0]["content_id"] == "promo_ship"


def test_rules_doc_update_compiles_and_does_not_mutate_the_input() -> None:
    doc = rules_doc()
    before = copy.deepcopy(doc)
    stats = BanditStats(bandit_ids={"promo", "other"})
    for i in range(300):
        eid = f"d{i}:promo_slot"
        seg = "deal_seekers" if i % 3 == 0 else None
        stats.add_exposure(eid, "promo", "ten" if i % 2 else "ship", seg)
        if i % 7 == 0:
            stats.add_reward(eid)
    stats.add_exposure("x1:promo_slot", "other", "x")
    new = update_rules_doc(doc, stats, decay=0.95)
    assert doc == before
    assert new is not doc and new["bandits"] is not doc["bandits"]
    assert new["placements"] == doc["placements"] and new["contents"] == doc["contents"]
    assert arm(new["bandits"]["other"], "x") == (1.0, 2.0)
    ruleset = compile_rules(new)
    policy = ruleset.bandits["promo"]
    for segment in (None, "deal_seekers"):
        props = policy.propensities(segment)
        assert all(0.05 / 2 <= p <= 1 for p in props)
        assert math.fsum(props) == pytest.approx(1.0, abs=1e-9)
    for bandit in new["bandits"].values():
        for spec in [bandit, *bandit.get("segments", {}).values()]:
            for a in spec["arms"]:
                assert MIN_SHAPE <= a["alpha"] <= MAX_SHAPE and MIN_SHAPE <= a["beta"] <= MAX_SHAPE
    only = update_rules_doc(doc, stats, bandits={"other"})
    assert only["bandits"]["promo"] == doc["bandits"]["promo"]
    line = json.loads(rules_delta_line(new))
    assert line == {"op": "upsert", "rules": new}


def test_bad_inputs() -> None:
    doc = rules_doc()["bandits"]["promo"]
    with pytest.raises(ValueError, match="decay"):
        update_bandit_doc(doc, BanditCounts(), bandit_id="promo", decay=1.5)
    with pytest.raises(ValueError, match="prior"):
        update_bandit_doc(doc, BanditCounts(), bandit_id="promo", prior=(0.1, 1.0))
    with pytest.raises(ValueError, match="max_shape"):
        update_bandit_doc(doc, BanditCounts(), bandit_id="promo", max_shape=2e9)
    with pytest.raises(BanditError, match=r"bandits\.promo\.arms\[1\]\.alpha"):
        update_bandit_doc(
            {"arms": [{"id": "a", "alpha": 1, "beta": 1}, {"id": "b", "beta": 1}]},
            BanditCounts(),
            bandit_id="promo",
        )
    with pytest.raises(ValueError):
        BanditStats(reward_types=())
    with pytest.raises(ValueError):
        simulate([0.1, 0.2], 10, 10, 0, rates_after=[0.2, 0.1])


# --- schedule ---------------------------------------------------------------------------------------


def test_schedule() -> None:
    s = LearningSchedule(every_rewards=100, every_exposures=10_000, every_seconds=60.0, min_seconds=5.0)
    due = s.due
    assert due(new_rewards=0, new_exposures=0, now=1e6, last_publish=0.0) is None  # nothing new
    assert due(new_rewards=1, new_exposures=1, now=10.0, last_publish=None) == "time"  # first publish
    assert due(new_rewards=100, new_exposures=500, now=10.0, last_publish=0.0) == "rewards"
    assert due(new_rewards=100, new_exposures=500, now=3.0, last_publish=0.0) is None  # too soon
    assert due(new_rewards=5, new_exposures=10_000, now=10.0, last_publish=0.0) == "exposures"
    assert due(new_rewards=5, new_exposures=500, now=59.9, last_publish=0.0) is None
    assert due(new_rewards=0, new_exposures=1, now=60.0, last_publish=0.0) == "time"
    counts_only = LearningSchedule(every_rewards=10, every_seconds=None)
    assert counts_only.due(new_rewards=9, new_exposures=10**9, now=1e9, last_publish=0.0) is None
    with pytest.raises(ValueError):
        LearningSchedule(every_rewards=None, every_exposures=None, every_seconds=None)
    with pytest.raises(ValueError):
        LearningSchedule(every_rewards=0)


# --- simulation -------------------------------------------------------------------------------------


def test_simulation_converges_to_the_best_arm() -> None:
    result = simulate([0.02, 0.035, 0.05], rounds=200, batch=100, seed=1)
    assert result.pulls == 20_000
    assert result.best_arm_share_last_10pct > 0.8
    assert result.uniform_regret_per_pull == pytest.approx(0.015)
    assert result.regret_per_pull < 0.25 * result.uniform_regret_per_pull
    deciles = result.regret_per_pull_by_decile
    assert len(deciles) == 10
    assert sum(deciles[5:]) < 0.5 * sum(deciles[:5])  # regret per pull falls over time
    assert deciles[-1] < deciles[0]
    means = result.final_means[None]
    assert max(range(3), key=means.__getitem__) == 2
    assert means[2] == pytest.approx(0.05, abs=0.01)
    assert result.cumulative_regret == pytest.approx(result.regret_per_pull * result.pulls)
    compile_bandit(result.final_doc, "bandits.sim")


def test_simulation_is_deterministic() -> None:
    a = simulate([0.1, 0.2], rounds=20, batch=50, seed=3)
    b = simulate([0.1, 0.2], rounds=20, batch=50, seed=3)
    assert (a.cumulative_regret, a.rewards, a.final_doc) == (b.cumulative_regret, b.rewards, b.final_doc)


def test_simulation_per_segment_learns_each_segments_best_arm() -> None:
    result = simulate({"a": [0.02, 0.06], "b": [0.06, 0.02]}, rounds=150, batch=100, seed=2)
    assert result.best_arm_share_last_10pct_by_segment["a"] > 0.8
    assert result.best_arm_share_last_10pct_by_segment["b"] > 0.8
    assert result.final_means["a"][1] > result.final_means["a"][0]
    assert result.final_means["b"][0] > result.final_means["b"][1]
    assert set(result.final_doc["segments"]) == {"a", "b"}


def test_decay_tracks_a_change_of_the_best_arm() -> None:
    kwargs: dict[str, Any] = {"rates_after": [0.03, 0.1], "change_round": 100}
    after_change: dict[float, list[float]] = {1.0: [], 0.98: []}
    shares: dict[float, list[float]] = {1.0: [], 0.98: []}
    for decay in after_change:
        for seed in range(3):
            r = simulate([0.1, 0.03], rounds=200, batch=100, seed=seed, decay=decay, **kwargs)
            after_change[decay].append(sum(r.regret_per_pull_by_decile[5:]) / 5)
            shares[decay].append(r.best_arm_share_last_10pct)
    assert min(shares[0.98]) > 0.9
    assert sum(after_change[0.98]) < 0.5 * sum(after_change[1.0])


def test_posterior_means() -> None:
    doc = rules_doc()["bandits"]["promo"]
    assert posterior_means(doc) == {"ship": 3 / 43, "ten": 0.5}
    assert posterior_means(doc, "deal_seekers") == {"ship": 0.5, "ten": 2 / 11}
