"""Contextual bandits: the kernel against its NumPy reference, exact propensities, compiling, the pipeline
(feature vector, consent, exposure records) and learning (A, b from exposures and attributed rewards)."""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from linear_support import add_contextual_bandit, contextual_bandit_doc

from edgewise.core._linear_bandit import LinearChooser
from edgewise.core.bandit_learning import BanditStats, update_rules_doc
from edgewise.core.bandits import BanditError
from edgewise.core.decisions import Context, DecideRequest, DecideResponse, PlacementRequest
from edgewise.core.exposure import exposure_records
from edgewise.core.forwarded import record_problem
from edgewise.core.linear_bandit_learning import LinearStats, update_linear_rules_doc
from edgewise.core.linear_bandits import choose_reference, compile_linear_bandit
from edgewise.core.pipeline import Pipeline
from edgewise.core.store import Store
from edgewise.sync.bundle import load_bundle
from edgewise.sync.snapshot import apply_bundle

NOW = 1_750_000_000_000


def _random_model(rng: np.random.Generator, k: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    a = np.empty((k, d, d))
    b = np.empty((k, d))
    for i in range(k):
        xs = rng.normal(size=(rng.integers(0, 50), d))
        a[i] = np.eye(d) + xs.T @ xs
        b[i] = rng.normal(size=d) * 3
    return a, b


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    k=st.integers(1, 12),
    d=st.integers(1, 40),
    floor=st.floats(0.0, 0.9),
    temperature=st.floats(0.005, 5.0),
    ucb=st.floats(0.0, 3.0),
    u=st.floats(0.0, 1.0, exclude_max=True),
)
def test_kernel_matches_the_numpy_reference(
    seed: int, k: int, d: int, floor: float, temperature: float, ucb: float, u: float
) -> None:
    rng = np.random.default_rng(seed)
    a, b = _random_model(rng, k, d)
    x = np.where(rng.random(d) < 0.5, 0.0, rng.normal(size=d))
    x[0] = 1.0
    a_inv = np.ascontiguousarray(np.linalg.inv(a))
    theta = np.ascontiguousarray(np.einsum("kij,kj->ki", a_inv, b))
    chooser = LinearChooser(theta, a_inv, ucb, temperature, floor)
    probs = np.empty(k)
    chooser.probabilities_into(x.tolist(), probs)
    index, propensity = chooser.choose(x.tolist(), u)
    ref_index, ref_probs = choose_reference(theta, a_inv, x, ucb, temperature, floor, u)
    np.testing.assert_allclose(probs, ref_probs, rtol=1e-9, atol=1e-12)
    assert propensity == probs[index]
    assert abs(probs.sum() - 1.0) < 1e-12
    assert np.all(probs >= floor / k - 1e-15)
    # The same arm, unless u falls within rounding of a boundary of the cumulative distribution.
    if index != ref_index:
        assert min(abs(np.cumsum(ref_probs) - u)) < 1e-9


def test_kernel_refuses_bad_input() -> None:
    theta = np.zeros((3, 4))
    a_inv = np.zeros((3, 4, 4))
    chooser = LinearChooser(theta, a_inv, 1.0, 1.0, 0.0)
    with pytest.raises(ValueError):
        chooser.choose([0.0] * 5, 0.5)
    with pytest.raises(ValueError):
        chooser.probabilities_into([0.0] * 4, np.zeros(2))
    with pytest.raises(ValueError):
        LinearChooser(theta, a_inv, 1.0, 0.0, 0.0)
    with pytest.raises(ValueError):
        LinearChooser(theta, a_inv, 1.0, 1.0, 1.0)
    with pytest.raises(ValueError):
        LinearChooser(theta, np.zeros((3, 4, 3)), 1.0, 1.0, 0.0)
    with pytest.raises(ValueError):
        LinearChooser(np.zeros((65, 4)), np.zeros((65, 4, 4)), 1.0, 1.0, 0.0)


def test_choice_frequencies_match_the_logged_propensities() -> None:
    rng = np.random.default_rng(5)
    a, b = _random_model(rng, 5, 6)
    policy = compile_linear_bandit(
        {
            "context": [{"path": "context.device", "values": ["a", "b", "c", "d", "e"]}],
            "arms": [{"id": f"arm{i}", "A": a[i].tolist(), "b": (b[i] * 0.05).tolist()} for i in range(5)],
            "exploration_floor": 0.1,
            "temperature": 0.2,
            "ucb": 0.3,
        },
        "bandits.t",
    )
    x = [1.0, 0.0, 1.0, 0.0, 0.0, 0.0]
    expected = policy.probabilities(x)
    n = 100_000
    counts: Counter[str] = Counter()
    draws = np.random.default_rng(7)
    for _ in range(n):
        arm, propensity = policy.choose(draws, x)
        assert propensity == pytest.approx(expected[[a.id for a in policy.arms()].index(arm.id)], abs=1e-15)
        counts[arm.id] += 1
    for i, arm in enumerate(policy.arms()):
        p = expected[i]
        assert abs(counts[arm.id] / n - p) < 4 * (p * (1 - p) / n) ** 0.5, (arm.id, counts[arm.id] / n, p)


def test_theta_is_the_ridge_solution() -> None:
    rng = np.random.default_rng(1)
    a, b = _random_model(rng, 2, 4)
    policy = compile_linear_bandit(
        {
            "context": [{"path": "profile.ltv", "scale": 10}, {"hours": [[0, 12], [12, 24]]}],
            "arms": [{"id": f"a{i}", "A": a[i].tolist(), "b": b[i].tolist()} for i in range(2)],
        },
        "bandits.t",
    )
    for i in range(2):
        np.testing.assert_allclose(policy.theta[i], np.linalg.solve(a[i], b[i]), rtol=1e-9)
        np.testing.assert_allclose(policy.a_inv[i] @ a[i], np.eye(4), atol=1e-9)
    assert policy.feature_names() == ["intercept", "profile.ltv/10", "hour in [0, 12)", "hour in [12, 24)"]


@pytest.mark.parametrize(
    ("doc", "path"),
    [
        ({"arms": [{"id": "a"}], "context": "device"}, "bandits.t.context"),
        ({"arms": [], "context": []}, "bandits.t.arms"),
        ({"arms": [{"id": "a"}, {"id": "a"}], "context": []}, "bandits.t.arms[1].id"),
        ({"arms": [{"id": "a", "alpha": 1}], "context": []}, "bandits.t.arms[0].alpha"),
        ({"arms": [{"id": "a", "A": [[1, 0], [0, 1]]}], "context": []}, "bandits.t.arms[0].A"),
        ({"arms": [{"id": "a", "A": [[-1.0]]}], "context": []}, "bandits.t"),
        ({"arms": [{"id": "a", "b": [1, 2]}], "context": []}, "bandits.t.arms[0].b"),
        ({"arms": [{"id": "a"}], "context": [{"path": "device"}]}, "bandits.t.context[0].path"),
        (
            {"arms": [{"id": "a"}], "context": [{"path": "context.device", "values": []}]},
            "bandits.t.context[0].values",
        ),
        (
            {"arms": [{"id": "a"}], "context": [{"path": "profile.x", "scale": 0}]},
            "bandits.t.context[0].scale",
        ),
        ({"arms": [{"id": "a"}], "context": [{"segment": "nope"}]}, "bandits.t.context[0].segment"),
        ({"arms": [{"id": "a"}], "context": [{"hours": [[5, 3]]}]}, "bandits.t.context[0].hours[0]"),
        ({"arms": [{"id": "a"}], "context": [], "temperature": 0}, "bandits.t"),
        ({"arms": [{"id": "a"}], "context": [], "exploration_floor": 1}, "bandits.t"),
        ({"arms": [{"id": "a"}], "context": [], "ucb": "x"}, "bandits.t.ucb"),
        ({"arms": [{"id": "a"}], "context": [], "segments": {}}, "bandits.t.segments"),
        (
            {
                "arms": [{"id": "a"}],
                "context": [{"path": "context.x", "values": [str(i) for i in range(64)]}],
            },
            "bandits.t.context",
        ),
    ],
)
def test_bad_documents_name_the_field(doc: dict[str, Any], path: str) -> None:
    with pytest.raises(BanditError) as err:
        compile_linear_bandit(doc, "bandits.t", segments={"vip"})
    assert err.value.path == path


# --- in the pipeline ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ctx_engine(
    tmp_path_factory: pytest.TempPathFactory, bundle_dir: Path
) -> Iterator[tuple[Store, Pipeline]]:
    bundle = tmp_path_factory.mktemp("ctx") / "b"
    shutil.copytree(bundle_dir, bundle)
    add_contextual_bandit(bundle)
    store = Store(tmp_path_factory.mktemp("ctx-store"), map_size=1 << 30)
    apply_bundle(store, load_bundle(bundle))
    yield store, Pipeline()
    store.close()


def _decide(engine: tuple[Store, Pipeline], request: DecideRequest) -> DecideResponse:
    store, pipeline = engine
    with store.read() as view:
        return pipeline.decide(view, request)


def _request(**kw: Any) -> DecideRequest:
    kw.setdefault("now_ms", NOW)
    kw.setdefault("user_id", "u-anon-1")
    return DecideRequest(placements=(PlacementRequest("ctx_slot"),), **kw)


def test_pipeline_serves_an_arm_with_the_request_s_vector(ctx_engine: tuple[Store, Pipeline]) -> None:
    consent = frozenset({"personalization", "analytics"})
    out = _decide(ctx_engine, _request(consent=consent, context=Context(device="mobile", channel="app")))
    slot = out.placements[0]
    assert slot.strategy == "bandit" and slot.experiment_id == "ctx_bandit"
    assert slot.variant_id in {"shipping", "ten_off", "gift_wrap"}
    assert slot.content_id == f"promo_{slot.variant_id}"
    assert slot.context_vector == (1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0)
    # With no data every arm scores the same: the propensity is 1/3, exactly as logged.
    assert slot.propensity == pytest.approx(1 / 3, abs=1e-12)
    [record] = exposure_records("dec-1", _request(consent=consent), out)
    doc = msgpack.unpackb(record, raw=False)
    assert doc["cx"] == list(slot.context_vector) and doc["pr"] == slot.propensity
    assert len(doc) == 22 and record_problem(doc, NOW + 1) is None


def test_profile_features_need_consent(ctx_engine: tuple[Store, Pipeline], bundle_dir: Path) -> None:
    young = next(
        p.id
        for p in load_bundle(bundle_dir).profiles
        if p.attributes.get("age_band") == "18-24" and "personalization" in p.consent
    )
    out = _decide(ctx_engine, _request(user_id=young, consent=frozenset({"personalization"})))
    vector = out.placements[0].context_vector
    assert vector[5] in (0.0, 1.0)  # readable only when the profile grants the attribute's purpose
    without = _decide(ctx_engine, _request(user_id=young, consent=frozenset()))
    assert without.placements[0].strategy != "bandit" and without.placements[0].context_vector == ()


def test_beta_bandits_are_unchanged_by_contextual_ones(ctx_engine: tuple[Store, Pipeline]) -> None:
    out = _decide(
        ctx_engine,
        DecideRequest(
            placements=(PlacementRequest("promo_slot"),),
            user_id="u1",
            consent=frozenset({"personalization"}),
            now_ms=NOW,
        ),
    )
    assert out.placements[0].strategy == "bandit" and out.placements[0].context_vector == ()


# --- learning -------------------------------------------------------------------------------------


def _exposure(i: int, arm: str, x: list[float]) -> dict[str, Any]:
    return {"k": "exposure", "id": f"d{i}:ctx_slot", "x": "ctx_bandit", "v": arm, "st": "bandit", "cx": x}


def test_learning_sums_each_exposure_and_reward_once() -> None:
    rules = {"bandits": {"ctx_bandit": contextual_bandit_doc()}}
    rng = np.random.default_rng(3)
    stats = LinearStats()
    beta = BanditStats()
    xs = {}
    for i in range(300):
        x = [1.0, *rng.integers(0, 2, size=6).astype(float).tolist()]
        arm = ("shipping", "ten_off", "gift_wrap")[i % 3]
        xs[i] = (arm, np.array(x))
        record = _exposure(i, arm, x)
        assert not beta.add_exposure_record(record)  # contextual: not a Beta exposure
        assert stats.add_exposure_record(record)
        assert not stats.add_exposure_record(record)  # delivered twice: counted once
    rewarded = [i for i in range(300) if i % 4 == 0]
    for i in rewarded[:40]:
        assert stats.add_reward(f"d{i}:ctx_slot")
        assert not stats.add_reward(f"d{i}:ctx_slot")  # a second click: rewarded once
    first = update_linear_rules_doc(rules, stats.take())
    for i in rewarded[40:]:  # late rewards, after their exposures were published
        assert stats.add_reward(f"d{i}:ctx_slot")
    second = update_linear_rules_doc(first, stats.take())
    for arm_doc in second["bandits"]["ctx_bandit"]["arms"]:
        mine = [i for i in range(300) if xs[i][0] == arm_doc["id"]]
        a = np.eye(7) + sum(np.outer(xs[i][1], xs[i][1]) for i in mine)
        b = sum((xs[i][1] for i in mine if i in rewarded), np.zeros(7))
        np.testing.assert_allclose(arm_doc["A"], a, rtol=1e-12)
        np.testing.assert_allclose(arm_doc["b"], b, rtol=1e-12)
    # The Beta learner leaves contextual bandits alone; the published document compiles.
    assert update_rules_doc(second, beta)["bandits"] == second["bandits"]
    policy = compile_linear_bandit(second["bandits"]["ctx_bandit"], "b", segments={"deal_seekers"})
    assert policy.theta.shape == (3, 7)


def test_learning_ignores_vectors_of_another_dimension() -> None:
    stats = LinearStats()
    assert stats.add_exposure_record(_exposure(1, "shipping", [1.0, 0.0]))
    assert not stats.add_exposure_record(_exposure(2, "shipping", [1.0, 0.0, 1.0]))
    assert not stats.add_exposure_record(_exposure(3, "shipping", []))
    assert not stats.add_exposure_record({**_exposure(4, "shipping", [1.0]), "cx": ["a"]})
    doc = update_linear_rules_doc({"bandits": {"ctx_bandit": contextual_bandit_doc()}}, stats.take())
    assert "A" not in doc["bandits"]["ctx_bandit"]["arms"][0]  # a 2-d batch does not fit d = 7


def test_forwarded_vector_checks() -> None:
    base = {"id": "d:p", "ts": NOW, "k": "exposure"}
    assert record_problem({**base, "cx": [1.0, 0.5]}, NOW) is None
    assert (
        record_problem({**base, "cx": [1.0, float("nan")]}, NOW) == "cx: [1] must be a finite number, got nan"
    )
    assert record_problem({**base, "cx": [0.0] * 65}, NOW) is not None
    assert record_problem({**base, "cx": "x"}, NOW) is not None


def test_explanation_names_the_features_the_choice_used(ctx_engine: tuple[Store, Pipeline]) -> None:
    out = _decide(
        ctx_engine,
        _request(consent=frozenset({"personalization"}), context=Context(device="desktop"), explain=True),
    )
    assert out.explanation is not None
    [placement] = out.explanation.placements
    assert placement.experiment_id == "ctx_bandit"
    assert any("linear model on context.device=desktop" in note for note in placement.notes), placement.notes
