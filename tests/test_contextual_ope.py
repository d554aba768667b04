"""`eval ope --policy contextual`: the contextual bandit's exact choice probabilities as the evaluation
policy (unbiased IPS on a synthetic log with a known value), and the command end to end on the Open
Bandit Dataset (skipped when ../shared/data/open-bandit is absent)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgewise.cli import main
from edgewise.core import ope
from edgewise.core.linear_bandits import compile_linear_bandit
from edgewise.offline import contextual_ope
from edgewise.offline.ope_cli import evaluate_ope, load_obd_log

OPEN_BANDIT = Path(__file__).resolve().parents[2] / "shared" / "data" / "open-bandit"
RANDOM_LOG = OPEN_BANDIT / "random" / "men" / "men.csv"
BTS_LOG = OPEN_BANDIT / "bts" / "men" / "men.csv"
needs_obd = pytest.mark.skipif(
    not (RANDOM_LOG.is_file() and BTS_LOG.is_file()),
    reason=f"no Open Bandit Dataset at {OPEN_BANDIT} (random/men/men.csv and bts/men/men.csv)",
)


def test_ips_of_the_contextual_policy_is_unbiased_on_a_uniform_log() -> None:
    # Three arms, a context column with two values, click rates that depend on both: the logged policy
    # is uniform; the evaluation policy is a contextual bandit with fixed models. Its exact value is
    # E_x sum_a pi(a | x) mu(x, a); IPS with the policy's probabilities must cover it.
    mu = {"a": np.array([0.1, 0.3, 0.2]), "b": np.array([0.4, 0.1, 0.2])}
    doc = {
        "context": [{"path": "context.attributes.user_feature_0", "values": ["a", "b"]}],
        "arms": [
            {"id": "0", "b": [0.0, 0.0, 2.0]},
            {"id": "1", "b": [0.0, 2.0, 0.0]},
            {"id": "2", "b": [0.0, 0.0, 0.0]},
        ],
        "temperature": 0.5,
        "exploration_floor": 0.1,
    }
    policy = compile_linear_bandit(doc, "bandits.t")
    exact = {
        v: policy.probabilities(
            policy.vector(contextual_ope.RowSource({"user_feature_0": v}), _Never(), None)
        )
        for v in mu
    }
    value = float(np.mean([exact[v] @ mu[v] for v in mu]))
    rng = np.random.default_rng(4)
    n = 60_000
    users = rng.choice(["a", "b"], size=n)
    actions = rng.integers(0, 3, size=n)
    rewards = (rng.random(n) < np.array([mu[u][a] for u, a in zip(users, actions, strict=True)])).astype(
        float
    )
    rows = [{"user_feature_0": str(u), "position": "1"} for u in users]
    dist = contextual_ope.action_dist(policy, rows, np.zeros(n, dtype=np.int64), 1)
    estimate = ope.ips(actions, rewards, np.full(n, 1 / 3), dist, np.zeros(n, dtype=np.int64))
    assert estimate.covers(value), (estimate, value)
    assert abs(estimate.value - value) < 0.01


class _Never:
    def matches(self, segment_id: str) -> bool:
        return False


@needs_obd
def test_contextual_policy_on_the_open_bandit_dataset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = evaluate_ope(RANDOM_LOG, BTS_LOG, policy="contextual", bootstrap=0, train_fraction=0.5)
    log = load_obd_log(RANDOM_LOG)
    assert report.log_rows == len(log) // 2 and report.n_actions == 34
    assert [e.estimator for e in report.estimates] == ["IPS", "SNIPS", "DR"]
    # IPS by hand: the learned policy's probabilities for the second half's rows at their positions.
    rows = contextual_ope.read_rows(RANDOM_LOG)
    half = len(rows) // 2
    doc = contextual_ope.default_doc(rows[:half], 34)
    doc = contextual_ope.learn(doc, rows[:half], log.actions[:half], log.rewards[:half])
    policy = compile_linear_bandit(doc, "bandits.obd")
    p = np.array(
        [
            policy.probabilities(x)[a]
            for x, a in zip(contextual_ope.vectors(policy, rows[half:]), log.actions[half:], strict=True)
        ]
    )
    direct = float(np.mean(p / log.propensities[half:] * log.rewards[half:]))
    assert report.estimates[0].value == pytest.approx(direct)
    # The command, with a document of one's own.
    doc_file = tmp_path / "doc.json"
    doc_file.write_text(
        json.dumps(
            {
                "context": [{"path": "context.attributes.position", "values": ["1", "2", "3"]}],
                "arms": [{"id": str(i)} for i in range(34)],
            }
        )
    )
    args = ["eval", "ope", "--log", str(RANDOM_LOG), "--truth", str(BTS_LOG), "--policy", "contextual"]
    assert main([*args, "--bandit-doc", str(doc_file), "--bootstrap", "0", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["policy"] == "contextual" and "4 features" in out["policy_note"]
    assert main([*args, "--train-fraction", "1.5"]) == 2


@needs_obd
def test_the_open_bandit_comparison_bench_runs() -> None:
    from edgewise.bench.contextual_obd import run

    result = run(OPEN_BANDIT, seeds=1, publish_every=10, bootstrap=0)
    assert set(result["replay"]) == {"contextual", "bernoulli-ts pooled"}
    assert result["replay"]["contextual"]["matched_mean"] > 100  # about 1/34 of 10,000 rows
    for estimates in result["ope_second_half"]["estimates"].values():
        assert [e["estimator"] for e in estimates] == ["IPS", "SNIPS", "DR"]
