"""Off-policy evaluation: the estimators on synthetic logs with known policies and a known value, the
Bernoulli-TS action distribution, input checks, and `edgewise eval ope` end to end on the Open Bandit
Dataset (skipped when ../shared/data/open-bandit is absent)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from edgewise.cli import main
from edgewise.core import ope
from edgewise.offline.ope_cli import OpeError, evaluate_ope, load_obd_log, zozotown_prior

OPEN_BANDIT = Path(__file__).resolve().parents[2] / "shared" / "data" / "open-bandit"
RANDOM_LOG = OPEN_BANDIT / "random" / "men" / "men.csv"
BTS_LOG = OPEN_BANDIT / "bts" / "men" / "men.csv"
needs_obd = pytest.mark.skipif(
    not (RANDOM_LOG.is_file() and BTS_LOG.is_file()),
    reason=f"no Open Bandit Dataset at {OPEN_BANDIT} (random/men/men.csv and bts/men/men.csv)",
)

CONTEXTS = 4
ACTIONS = 5


def _world(seed: int = 7) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Expected rewards mu (C, A), logging pi_0 (C, A), target pi_e (C, A) and V(pi_e), exactly."""
    rng = np.random.default_rng(seed)
    mu = rng.uniform(0.02, 0.98, size=(CONTEXTS, ACTIONS))
    logits = rng.normal(size=(CONTEXTS, ACTIONS))
    pi0 = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    pi0 = 0.8 * pi0 + 0.2 / ACTIONS  # every action has some logging probability
    pie = np.exp(3.0 * mu) / np.exp(3.0 * mu).sum(axis=1, keepdims=True)  # prefers good actions
    value = float((pie * mu).sum(axis=1).mean())  # contexts are uniform
    return mu, pi0, pie, value


def _simulate(rng: np.random.Generator, n: int, mu: np.ndarray, pi0: np.ndarray):
    x = rng.integers(0, CONTEXTS, size=n)
    u = rng.random(n)[:, None]
    a = (u > np.cumsum(pi0[x], axis=1)).sum(axis=1)
    a = np.minimum(a, ACTIONS - 1)
    r = (rng.random(n) < mu[x, a]).astype(np.float64)
    return x, a.astype(np.int64), r, pi0[x, a]


def _estimates(x, a, r, p0, pie, *, bootstrap: int = 0):
    dist = pie[x]  # (n, A): pi_e(. | x_i)
    q_hat = ope.cross_fit_cell_means(a, r, x, ACTIONS, CONTEXTS, smoothing=1.0, seed=1)  # (n, A, C)
    q_at = q_hat[np.arange(len(x)), :, x]  # the model for round i's own context
    return (
        ope.ips(a, r, p0, dist, bootstrap=bootstrap),
        ope.snips(a, r, p0, dist, bootstrap=bootstrap),
        ope.doubly_robust(a, r, p0, dist, q_at, bootstrap=bootstrap),
    )


def test_estimators_recover_a_known_value_and_dr_has_lower_variance() -> None:
    mu, pi0, pie, value = _world()
    rng = np.random.default_rng(2024)
    runs = {"IPS": [], "SNIPS": [], "DR": []}
    covered = {"IPS": 0, "SNIPS": 0, "DR": 0}
    replicates = 80
    for _ in range(replicates):
        x, a, r, p0 = _simulate(rng, 3000, mu, pi0)
        for est in _estimates(x, a, r, p0, pie):
            runs[est.estimator].append(est.value)
            covered[est.estimator] += est.covers(value)
    for name, values in runs.items():
        mean = float(np.mean(values))
        sd = float(np.std(values, ddof=1))
        # unbiased (SNIPS up to O(1/n)): the mean over replicates is within 4 standard errors of V
        assert abs(mean - value) < 4 * sd / math.sqrt(replicates), (name, mean, value)
        # the 95% normal intervals cover V in most replicates
        assert covered[name] / replicates >= 0.85, (name, covered[name])
    assert np.var(runs["DR"]) < 0.7 * np.var(runs["IPS"])


def test_bootstrap_intervals_are_seeded_and_cover_the_value() -> None:
    mu, pi0, pie, value = _world()
    x, a, r, p0 = _simulate(np.random.default_rng(5), 20_000, mu, pi0)
    boot = _estimates(x, a, r, p0, pie, bootstrap=300)
    again = _estimates(x, a, r, p0, pie, bootstrap=300)
    normal = _estimates(x, a, r, p0, pie)
    for b, b2, nrm in zip(boot, again, normal, strict=True):
        assert b == b2
        assert b.ci_method.startswith("bootstrap (300 resamples")
        assert b.value == nrm.value
        assert b.covers(value), b
        # both interval methods agree on the width to within a third
        assert abs((b.ci_high - b.ci_low) / (nrm.ci_high - nrm.ci_low) - 1) < 0.33


def test_on_policy_value_of_the_logging_policy() -> None:
    mu, pi0, _, _ = _world()
    x, a, r, p0 = _simulate(np.random.default_rng(9), 20_000, mu, pi0)
    logging_value = float((pi0 * mu).sum(axis=1).mean())
    est = ope.ips(a, r, p0, pi0[x])  # evaluating the logging policy: every weight is 1
    assert est.value == pytest.approx(r.mean())
    assert est.covers(logging_value)
    assert ope.on_policy(r).covers(logging_value)


def test_positions_select_the_slot_distribution() -> None:
    dist = np.array([[0.5, 0.0], [0.5, 1.0]])  # (A=2, P=2): slot 1 always shows action 1
    full = np.broadcast_to(dist, (3, 2, 2))
    at = ope.policy_at(full, np.array([0, 1, 1]))
    assert at.tolist() == [[0.5, 0.5], [0.0, 1.0], [0.0, 1.0]]
    w = ope.importance_weights(np.array([0, 1, 0]), np.array([0.5, 0.5, 0.5]), full, np.array([0, 1, 1]))
    assert w.tolist() == [1.0, 2.0, 0.0]


def test_input_errors() -> None:
    dist = np.full((2, 2), 0.5)
    with pytest.raises(ValueError, match="propensities"):
        ope.ips([0, 1], [1.0, 0.0], [0.5, 0.0], dist)
    with pytest.raises(ValueError, match="sum to 1"):
        ope.ips([0, 1], [1.0, 0.0], [0.5, 0.5], np.full((2, 2), 0.4))
    with pytest.raises(ValueError, match="same length"):
        ope.ips([0, 1], [1.0], [0.5, 0.5], dist)
    with pytest.raises(ValueError, match="actions must lie"):
        ope.ips([0, 2], [1.0, 0.0], [0.5, 0.5], dist)
    with pytest.raises(ValueError, match="positions are required"):
        ope.ips([0, 1], [1.0, 0.0], [0.5, 0.5], np.full((2, 2, 1), 0.5))
    with pytest.raises(ValueError, match="bootstrap"):
        ope.ips([0, 1], [1.0, 0.0], [0.5, 0.5], dist, bootstrap=1)
    with pytest.raises(ValueError, match="empty"):
        ope.ips(np.array([], dtype=np.int64), [], [], np.zeros((0, 2)))


def test_bernoulli_ts_action_dist() -> None:
    # one clearly better arm: it is first almost always; the columns are distributions
    dist = ope.bernoulli_ts_action_dist([900, 10, 10], [100, 990, 990], 2, n_sim=20_000, seed=3)
    assert dist.shape == (3, 2)
    assert np.allclose(dist.sum(axis=0), 1.0)
    assert dist[0, 0] > 0.999
    assert dist[1, 1] == pytest.approx(0.5, abs=0.02)
    # two arms: P(arm 0 first) = P(theta_0 > theta_1), here by a fine grid integration
    a0, b0, a1, b1 = 3.0, 5.0, 4.0, 5.0
    grid = np.linspace(0, 1, 20_001)[1:-1]
    pdf0 = grid ** (a0 - 1) * (1 - grid) ** (b0 - 1)
    pdf0 /= pdf0.sum()
    cdf1 = np.cumsum(grid ** (a1 - 1) * (1 - grid) ** (b1 - 1))
    cdf1 /= cdf1[-1]
    exact = float((pdf0 * cdf1).sum())
    dist = ope.bernoulli_ts_action_dist([a0, a1], [b0, b1], 1, n_sim=200_000, seed=0)
    assert dist[0, 0] == pytest.approx(exact, abs=0.005)
    assert np.array_equal(dist, ope.bernoulli_ts_action_dist([a0, a1], [b0, b1], 1, n_sim=200_000, seed=0))


def test_zozotown_prior_shapes() -> None:
    for campaign, items in (("all", 80), ("men", 34), ("women", 46)):
        alpha, beta = zozotown_prior(campaign)
        assert alpha.shape == beta.shape == (items,)
        assert (alpha > 0).all() and (beta > alpha).all()


def _obd_csv(path: Path, rows: list[str]) -> Path:
    header = ",timestamp,item_id,position,click,propensity_score,user_feature_0"
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_log_errors_name_file_line_and_column(tmp_path: Path) -> None:
    ok = "0,2019-11-24 00:00:00+00:00,3,1,0,0.0294,abc"
    with pytest.raises(OpeError, match="no such file"):
        load_obd_log(tmp_path / "missing.csv")
    bad_click = _obd_csv(tmp_path / "a.csv", [ok, "1,2019-11-24 00:00:01+00:00,3,2,2,0.0294,abc"])
    with pytest.raises(OpeError, match=r"a\.csv:3: column 'click': expected 0 or 1, got '2'"):
        load_obd_log(bad_click)
    bad_prop = _obd_csv(tmp_path / "b.csv", ["0,t,3,1,0,0,abc"])
    with pytest.raises(OpeError, match=r"b\.csv:2: column 'propensity_score'"):
        load_obd_log(bad_prop)
    bad_item = _obd_csv(tmp_path / "c.csv", [ok, ok, "2,t,x,1,0,0.5,abc"])
    with pytest.raises(OpeError, match=r"c\.csv:4: column 'item_id': expected an integer, got 'x'"):
        load_obd_log(bad_item)
    short = _obd_csv(tmp_path / "d.csv", ["0,t,3,1,0"])
    with pytest.raises(OpeError, match=r"d\.csv:2: expected 7 fields"):
        load_obd_log(short)
    no_click = tmp_path / "e.csv"
    no_click.write_text("item_id,position,propensity_score\n1,1,0.5\n")
    with pytest.raises(OpeError, match=r"e\.csv:1: missing column\(s\) click"):
        load_obd_log(no_click)
    empty = _obd_csv(tmp_path / "f.csv", [])
    with pytest.raises(OpeError, match="no data rows"):
        load_obd_log(empty)


def test_cli_reports_a_bad_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = _obd_csv(tmp_path / "men.csv", ["0,t,3,1,1,0.0294,abc", "1,t,4,2,0,0.0294,abc"])
    bad = _obd_csv(tmp_path / "bts.csv", ["0,t,3,1,yes,0.0294,abc"])
    code = main(["eval", "ope", "--log", str(good), "--truth", str(bad), "--bootstrap", "0"])
    assert code == 1
    assert "bts.csv:2: column 'click'" in capsys.readouterr().err
    code = main(["eval", "ope", "--log", str(tmp_path / "nope.csv"), "--truth", str(good)])
    assert code == 1
    assert "nope.csv: no such file" in capsys.readouterr().err
    assert main(["eval", "ope", "--log", str(good), "--truth", str(good), "--bootstrap", "1"]) == 2


@needs_obd
def test_cli_end_to_end_on_a_slice_of_the_open_bandit_dataset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    slices = {}
    for name, src in (("random", RANDOM_LOG), ("bts", BTS_LOG)):
        lines = src.read_text().splitlines()[:3001]  # header + 3,000 rows
        folder = tmp_path / name / "men"
        folder.mkdir(parents=True)
        slices[name] = folder / "men.csv"
        slices[name].write_text("\n".join(lines) + "\n")
    args = ["eval", "ope", "--log", str(slices["random"]), "--truth", str(slices["bts"])]
    assert main([*args, "--policy", "bernoulli-ts", "--json", "--bootstrap", "200", "--n-sim", "20000"]) == 0
    out, err = capsys.readouterr()
    report = json.loads(out)
    assert "Monte-Carlo of Bernoulli TS" in err
    assert report["campaign"] == "men" and report["n_actions"] == 34 and report["log_rows"] == 3000
    truth_clicks = sum(line.split(",")[4] == "1" for line in slices["bts"].read_text().splitlines()[1:])
    assert report["truth"]["value"] == pytest.approx(truth_clicks / 3000)
    assert [e["estimator"] for e in report["estimates"]] == ["IPS", "SNIPS", "DR"]
    for e in report["estimates"]:
        assert e["ci95"][0] <= e["value"] <= e["ci95"][1]
        assert e["relative_error"] == pytest.approx(e["value"] / report["truth"]["value"] - 1)
    # the Markdown table
    assert main([*args, "--policy", "bernoulli-ts-empirical", "--bootstrap", "0"]) == 0
    out = capsys.readouterr().out
    assert "| IPS |" in out and "| DR |" in out and "empirical" in out


@needs_obd
def test_ips_on_the_full_random_log_matches_a_direct_computation() -> None:
    report = evaluate_ope(RANDOM_LOG, BTS_LOG, bootstrap=0, n_sim=50_000)
    log = load_obd_log(RANDOM_LOG)
    alpha, beta = zozotown_prior("men")
    dist = ope.bernoulli_ts_action_dist(alpha, beta, 3, n_sim=50_000, seed=0)
    direct = float(np.mean(dist[log.actions, log.positions] / log.propensities * log.rewards))
    assert report.estimates[0].value == pytest.approx(direct)
    assert report.truth.value == pytest.approx(load_obd_log(BTS_LOG).rewards.mean())


def _slot_log(seed: int, n: int, actions: int, slots: int):
    """A log over `slots` positions with one context-free evaluation policy per slot, (A, P)."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, actions, size=n)
    pos = rng.integers(0, slots, size=n)
    r = (rng.random(n) < 0.05 + 0.2 * (a % 3 == 0)).astype(np.float64)
    p0 = np.full(n, 1.0 / actions)
    dist = rng.dirichlet(np.ones(actions), size=slots).T  # (A, P), each column sums to 1
    return a, r, p0, pos, dist


def test_estimators_read_the_rounds_in_blocks_with_the_same_results(monkeypatch: pytest.MonkeyPatch) -> None:
    # Blocks of 7 rounds against one block of every round; the cell-mean model object against its
    # (n, A, P) array; a broadcast (n, A, P) view of one (A, P) policy against a full copy.
    a, r, p0, pos, dist = _slot_log(3, 1001, 6, 3)
    n = a.shape[0]
    view = np.broadcast_to(dist, (n, *dist.shape))
    model = ope.cross_fit_cell_model(a, r, pos, 6, 3, seed=4)
    array = ope.cross_fit_cell_means(a, r, pos, 6, 3, seed=4)
    assert np.array_equal(array, model.tables[model.fold])

    def run(q: object, d: np.ndarray) -> list[ope.Estimate]:
        return [
            ope.ips(a, r, p0, d, pos),
            ope.snips(a, r, p0, d, pos),
            ope.doubly_robust(a, r, p0, d, q, pos),  # type: ignore[arg-type]
            ope.doubly_robust(a, r, p0, d, q, pos, bootstrap=20, seed=5),  # type: ignore[arg-type]
        ]

    whole = run(array, np.array(view))
    monkeypatch.setattr(ope, "_CHUNK_ROUNDS", 7)
    for q, d in ((array, view), (model, view), (model, np.array(view))):
        assert run(q, d) == whole
    # and the blocks are checked like the whole: a round whose policy does not sum to 1 is refused
    bad = np.array(view)
    bad[500, :, :] *= 2
    with pytest.raises(ValueError, match="sum to 1"):
        ope.ips(a, r, p0, bad, pos)


def test_doubly_robust_on_a_large_log_stays_within_bounded_memory() -> None:
    # 1,000,000 rounds x 80 actions x 3 slots: the old path built (n, A) policy and model arrays and an
    # (n, A, P) q_hat, several GB; in blocks, with the model object and a broadcast policy, it stays
    # within a few rows of actions plus the per-round vectors.
    import tracemalloc

    a, r, p0, pos, dist = _slot_log(9, 1_000_000, 80, 3)
    model = ope.cross_fit_cell_model(a, r, pos, 80, 3, seed=1)
    view = np.broadcast_to(dist, (a.shape[0], 80, 3))
    tracemalloc.start()
    try:
        estimate = ope.doubly_robust(a, r, p0, view, model, pos)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert 0.0 < estimate.value < 1.0 and estimate.n == 1_000_000
    assert peak < 150 << 20, f"peak {peak / 2**20:.0f} MiB"
