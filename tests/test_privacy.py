"""Differential privacy: clipping bounds every contribution (both algorithms, both placements),
the noise has the configured standard deviation, the reported epsilon is dp-accounting's for the
same events, the budget stops a run before the round that would exceed it, noise 0 with a loose
clip changes nothing, and configs that would break the guarantee are errors. What a run
releases (secret randomness, nothing per client) is in test_privacy_release.py."""

import json

import dp_accounting
import numpy as np
import pytest
from dp_accounting.rdp import RdpAccountant
from flwr.app import Context, RecordDict
from scipy import stats

from client_app.app import app as client_app
from fedtune.algorithms import resolve
from fedtune.config import Config, ConfigError
from fedtune.payloads import ArraysPayload, SeedsPayload
from fedtune.privacy.accountant import Accountant
from fedtune.privacy.mechanism import clip, gaussian_noise, l2_norm, noisy_mean
from fedtune.privacy.payloads import clip_reply, contribution, reference_of
from fedtune.privacy.randomness import SECRET_ENV, privacy_rng
from fedtune.seeded import pack_pairs
from fedtune.strategies import build_strategy
from fedtune.wire import Records
from server_app.app import main as server_main
from tests.inprocess_grid import InProcessGrid
from tests.test_strategies import DELTAS, X0, run_strategy

FAST = {"num-server-rounds": 3, "local-steps": 3, "examples-per-client": 24,
        "eval-examples": 8, "client-eval-examples": 4, "max-new-tokens": 2,
        "fraction-train": 0.75, "min-train-nodes": 2, "min-available-nodes": 4,
        "fraction-evaluate": 0.0, "lr-schedule": "constant", "seed": 5}
ZO = {"algorithm": "fedkseed", "zo-seeds": 64, "zo-steps": 6, "batch-size": 2}


# ---- the mechanism -----------------------------------------------------------------------
def test_clip_bounds_the_norm_and_leaves_small_vectors_alone():
    gen = np.random.default_rng(0)
    for scale in (1e-3, 0.5, 3.0, 1e4):
        v = gen.normal(size=1000) * scale
        out, norm = clip(v, 1.5)
        assert norm == pytest.approx(np.linalg.norm(v))
        assert l2_norm(out) <= 1.5 * (1 + 1e-12)
        if norm <= 1.5:
            assert np.array_equal(out, v)
        else:  # same direction
            assert np.allclose(out / l2_norm(out), v / norm)


def test_noise_has_the_configured_standard_deviation():
    """(n-1) s^2 / sigma^2 ~ chi2(n-1): accept within its two-sided 1e-6 quantiles (a wrong
    sigma by 1% falls outside at n = 400,000), and the mean within 5.3 standard errors."""
    n, sigma = 400_000, 2.5 * 0.8  # z x C
    noise = gaussian_noise(n, sigma, np.random.default_rng(0))
    stat = (n - 1) * noise.var(ddof=1) / sigma**2
    lo, hi = stats.chi2.ppf([0.5e-6, 1 - 0.5e-6], n - 1)
    assert lo < stat < hi
    assert (n - 1) * noise.var(ddof=1) / (1.01 * sigma) ** 2 < lo  # the test has power
    assert abs(noise.mean()) < 5.3 * sigma / np.sqrt(n)
    assert np.array_equal(noise, gaussian_noise(n, sigma, np.random.default_rng(0)))


def test_noisy_mean_is_the_clipped_sum_plus_the_generators_noise_over_the_sample_size():
    gen = np.random.default_rng(1)
    contributions = [gen.normal(size=50) * s for s in (0.1, 2.0, 9.0)]
    mean, norms = noisy_mean(contributions, 4, 1.0, 1.7, np.random.default_rng(7))
    expected = (sum(clip(c, 1.0)[0] for c in contributions)
                + gaussian_noise(50, 1.7, np.random.default_rng(7))) / 4  # 4 sampled, 3 replied
    assert np.allclose(mean, expected, rtol=0, atol=1e-15)
    assert norms == pytest.approx([np.linalg.norm(c) for c in contributions])


# ---- the accountant ----------------------------------------------------------------------
def test_epsilon_is_what_dp_accounting_computes_for_the_same_events():
    events = [(1.3, 16, 64)] * 5 + [(1.3, 12, 60), (2.0, 64, 64)]
    ours = Accountant(1e-3)
    direct = RdpAccountant(
        neighboring_relation=dp_accounting.privacy_accountant.NeighboringRelation.REPLACE_ONE)
    for z, m, n in events:
        ours.record(z, m, n)
        gauss = dp_accounting.GaussianDpEvent(z / 2)  # replace-one: sensitivity 2C
        direct.compose(gauss if m == n else
                       dp_accounting.SampledWithoutReplacementDpEvent(n, m, gauss))
        assert ours.epsilon() == direct.get_epsilon(1e-3)
    restored = Accountant(1e-3)
    restored.load_state_dict(ours.state_dict())
    assert restored.epsilon() == ours.epsilon()
    assert Accountant(1e-3).epsilon() == 0.0
    no_noise = Accountant(1e-3)
    no_noise.record(0.0, 4, 8)
    assert no_noise.epsilon() == float("inf")


# ---- the wrapper, against a hand computation ---------------------------------------------
def _noise(size, std, rnd):
    """The noise of round ``rnd`` as the server draws it with the secret set (a run that is
    not bound to a config, as run_strategy's: fingerprint '')."""
    return gaussian_noise(size, std, privacy_rng("dp-noise", "", rnd))


@pytest.mark.parametrize("z", [0.0, 1.5])
def test_server_side_dp_releases_the_clipped_mean_plus_noise(z, monkeypatch):
    """Five toy clients reply x + round * DELTAS[p] (norms 0.57 to 2.8); each round the new
    global is x + (sum_p clip(round * DELTAS[p], C) + N(0, (z C)^2)) / 5 (the noise drawn
    with the server's secret, so that this test can regenerate it)."""
    monkeypatch.setenv(SECRET_ENV, "test-secret")
    c, seed = 0.9, 11
    seen = run_strategy("fedavg", rounds=2, dp="server", **{"dp-noise-multiplier": z,
                        "dp-clip-norm": c, "seed": seed})
    x = X0.astype(np.float64)
    for rnd in (1, 2):
        total = sum(clip((rnd * d).astype(np.float64).ravel(), c)[0] for d in DELTAS)
        noise = _noise(4, z * c, rnd)
        x = (x + ((total + noise) / 5).reshape(2, 2)).astype(np.float32).astype(np.float64)
        assert np.allclose(seen[rnd], x, rtol=0, atol=1e-6)
    if z == 0:  # the mean of norm-<=C updates moves the model by at most C
        assert np.linalg.norm(seen[1] - seen[0]) <= c


def test_fedavgm_steps_from_the_noisy_mean_only(monkeypatch):
    """Server momentum is post-processing of the released mean: FedAvgM's formula applied to
    the noisy means by hand gives the same models (m = beta m + (x - avg), x -= lr m)."""
    monkeypatch.setenv(SECRET_ENV, "test-secret")
    c, z, lr, beta, seed = 0.7, 0.5, 0.1, 0.9, 0
    seen = run_strategy("fedavgm", rounds=2, dp="server", **{
        "dp-noise-multiplier": z, "dp-clip-norm": c, "server-lr": lr, "seed": seed})
    x, m = X0.astype(np.float64), np.zeros((2, 2))
    for rnd in (1, 2):
        total = sum(clip((rnd * d).astype(np.float64).ravel(), c)[0] for d in DELTAS)
        mean = ((total + _noise(4, z * c, rnd)) / 5).reshape(2, 2)
        m = beta * m - mean if rnd > 1 else -mean
        x = x - lr * m
        assert np.allclose(seen[rnd], x, rtol=0, atol=1e-5)


# ---- client-side clipping: what goes on the wire has norm <= C ---------------------------
def test_client_clipping_bounds_adapter_updates_after_the_16_bit_wire():
    gen = np.random.default_rng(2)
    x = {"a": gen.normal(size=(64, 8)).astype(np.float16),
         "b": gen.normal(size=(8, 64)).astype(np.float16)}
    received = Records(arrays={"arrays": x})
    for scale in (1e-3, 0.05, 1.0, 30.0):
        y = {k: (v.astype(np.float32) + scale * gen.normal(size=v.shape)).astype(np.float16)
             for k, v in x.items()}
        reply = Records(arrays={"arrays": y}, metrics={"metrics": {"num-examples": 3}})
        for bound in (0.01, 0.5, 2.0):
            out = clip_reply(ArraysPayload(), reply, reference_of(received), bound)
            reference = {k: v.astype(np.float32) for k, v in x.items()}
            norm = l2_norm(contribution(ArraysPayload(), out, reference))
            assert norm <= bound
            assert out.arrays["arrays"]["a"].dtype == np.float16
            before = l2_norm(contribution(ArraysPayload(), reply, reference))
            if before > bound >= 0.5:  # keeps (almost) all it may, above fp16's rounding
                assert norm > 0.97 * bound
            assert out.metrics == reply.metrics


def test_client_clipping_bounds_the_per_seed_sums():
    """A seed drawn twice contributes the sum of its scalars; clipping scales them all."""
    k = 64
    indices = np.array([3, 7, 3, 60, 7, 7])
    scalars = np.array([5.0, -2.0, 4.0, 0.5, -1.0, 30.0], np.float32)
    reply = Records(configs={"zo": {"pairs": pack_pairs(indices, scalars, k)}})
    dense = contribution(SeedsPayload(k), reply, {})
    assert dense[3] == 9.0 and dense[7] == 27.0 and dense[60] == 0.5
    for bound in (0.1, 5.0, 100.0):
        out = clip_reply(SeedsPayload(k), reply, {}, bound)
        assert l2_norm(contribution(SeedsPayload(k), out, {})) <= bound
    assert clip_reply(SeedsPayload(k), reply, {}, 100.0) is not None


# ---- whole runs through the ServerApp on an in-process grid ------------------------------
def run_app(tmp_path, name, nodes=4, tamper=None, grid_ref=None, **keys):
    flat = {**FAST, **keys, "run-dir": str(tmp_path / name)}
    if str(flat.get("algorithm", "")).startswith("fedkseed"):
        flat["cache-dir"] = str(tmp_path / name / "zo-cache")
    grid = InProcessGrid(client_app, nodes, flat, tamper=tamper)
    if grid_ref is not None:
        grid_ref.append(grid)
    server_main(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                              run_config=flat))
    run_dir = tmp_path / name
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return rows, json.loads((run_dir / "summary.json").read_text()), grid


def _metrics(rows):
    drop = ("seconds", "train-seconds", "dp_", "train_loss")  # DP does not release train_loss
    return [{k: v for k, v in r.items() if not k.startswith(drop)} for r in rows]


@pytest.mark.parametrize("algo", ["fedit", "fedkseed"])
def test_no_noise_and_a_loose_clip_give_the_plain_run(tmp_path, algo, one_thread):
    """Equal weights (every client has 24 examples; FedKSeed also seeds-equal-weights) so the
    plain run averages as DP does; the metrics agree to float rounding. Every client trains
    every round: the DP sample is secret, so it could not match the plain run's seeded one."""
    keys = (ZO | {"seeds-equal-weights": True} if algo == "fedkseed" else {}) | {
        "fraction-train": 1.0}
    plain, _, _ = run_app(tmp_path, "plain", **keys)
    dp, summary, _ = run_app(tmp_path, "dp", dp="server", **keys,
                             **{"dp-noise-multiplier": 0.0, "dp-clip-norm": 1e6})
    assert len(plain) == len(dp) == 4
    for a, b in zip(_metrics(plain), _metrics(dp), strict=True):
        assert a.keys() == b.keys()
        for key, value in a.items():
            if isinstance(value, float):
                assert b[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
            else:
                assert b[key] == value, key
    assert dp[-1]["dp_clipped"] is None and summary["dp_epsilon"] is None  # unbounded
    assert [r["train_loss"] for r in dp] == [None] * 4  # the clients' mean loss: not released
    assert summary["dp_secret"] is False
    assert summary["dp_rounds"] == 3


@pytest.mark.parametrize("algo", ["fedit", "fedkseed"])
def test_a_dp_run_reports_dp_accountings_epsilon_each_round(tmp_path, algo, one_thread):
    keys = ZO if algo == "fedkseed" else {}
    rows, summary, _ = run_app(tmp_path, "dp", dp="client", **keys,
                               **{"dp-noise-multiplier": 1.2})
    direct = RdpAccountant(
        neighboring_relation=dp_accounting.privacy_accountant.NeighboringRelation.REPLACE_ONE)
    delta = 0.1 / 4  # the default rule: 0.1 / min-available-nodes
    assert rows[0]["dp_epsilon"] == 0.0
    for row in rows[1:]:  # 3 of the 4 nodes each round
        direct.compose(dp_accounting.SampledWithoutReplacementDpEvent(
            4, 3, dp_accounting.GaussianDpEvent(1.2 / 2)))
        assert row["dp_epsilon"] == direct.get_epsilon(delta)
        assert row["dp_delta"] == delta and row["dp_noise_multiplier"] == 1.2
        assert row["dp_clip_norm"] == (100.0 if algo == "fedkseed" else 1.0)
        assert row["clients"] == 3 and row["dropped"] == 0  # client-clipped replies pass
    assert np.isfinite(rows[-1]["eval_loss"])
    assert summary["dp_epsilon"] == rows[-1]["dp_epsilon"] and summary["dp_stopped"] is None
    assert "replace-one" in summary["dp_accounting"]


def test_the_budget_stops_the_run_before_the_round_that_would_exceed_it(tmp_path, one_thread):
    acc = Accountant(0.1 / 4)
    for _ in range(2):
        acc.record(1.0, 3, 4)
    budget = (acc.epsilon() + acc.epsilon_after(1.0, 3, 4)) / 2  # 2 rounds fit, 3 do not
    rows, summary, _ = run_app(tmp_path, "budget", dp="server", **ZO,
                               **{"dp-noise-multiplier": 1.0, "dp-max-epsilon": budget})
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert rows[-1]["dp_epsilon"] <= budget
    assert summary["dp_stopped"].startswith("round 3 was not run")
    assert (tmp_path / "budget" / "fedkseed-state.npz").exists()  # the result is written


def test_a_client_reply_over_the_bound_is_dropped_under_client_clipping(tmp_path, one_thread):
    from tests.test_strategies import _attack  # replies global + 100 x its change

    grid_ref: list = []
    rows, _, _ = run_app(tmp_path, "attack", nodes=3, dp="client", grid_ref=grid_ref,
                         tamper=_attack(0, grid_ref),
                         **{"fraction-train": 1.0, "num-server-rounds": 1,
                            "min-available-nodes": 3})
    assert rows[1]["dropped"] == 1 and rows[1]["clients"] == 2


# ---- configs that would break the guarantee ----------------------------------------------
@pytest.mark.parametrize("keys, words", [
    ({"strategy": "fedmedian"}, "strategy='fedmedian' cannot run with dp='server'"),
    ({"strategy": "krum"}, "looks at each client's update"),
    ({"strategy": "scaffold"}, "control variate"),
    ({"algorithm": "fedkseed", "seeds-robust-clip": 3.0}, "seeds-robust-clip cannot run"),
    ({"algorithm": "local"}, "baseline has none"),
])
def test_configs_that_break_the_guarantee_are_one_sentence_errors(keys, words):
    with pytest.raises(ConfigError, match=words):
        resolve(Config.from_flat({"dp": "server", **keys}))


def test_a_budget_without_noise_is_a_config_error():
    with pytest.raises(ConfigError, match="dp-max-epsilon needs dp-noise-multiplier > 0"):
        Config.from_flat({"dp": "client", "dp-noise-multiplier": 0.0, "dp-max-epsilon": 3.0})


def test_dp_off_builds_the_plain_strategy():
    cfg = Config.from_flat({})
    algo = resolve(cfg)
    assert type(build_strategy(cfg, algo.payload, algo.server(cfg))).__name__ == "FedAvg"


def test_server_side_clipping_bounds_fedkseeds_change_of_a(tmp_path, one_thread):
    """Without noise, one round moves A by the mean of norm-<=C per-seed sums: <= C."""
    run_app(tmp_path, "zo", dp="server", **ZO, **{"dp-noise-multiplier": 0.0,
                                                   "dp-clip-norm": 0.5, "num-server-rounds": 1})
    with np.load(tmp_path / "zo" / "fedkseed-state.npz") as state:
        change = state["accumulated"]
    # each of the 3 clipped sums has norm 0.5 (the clip binds: they are ~10); their seeds
    # barely overlap, so the mean of the 3 has norm near 0.5 / sqrt(3)
    assert 0.25 < l2_norm(change) <= 0.5 * (1 + 1e-6)
