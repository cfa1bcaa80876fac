"""FedKSeed through fedtune's round loop and the real ClientApp (in-process Grid, no Ray)."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord

from client_app.app import app as client_app
from fedtune.algorithms.fedkseed import client as fedkseed_client
from fedtune.algorithms.fedkseed.model import zo_model_for
from fedtune.algorithms.fedkseed.pro import encode_importance, probabilities_from
from fedtune.node import Node
from fedtune.seeded import SeedPool
from tests.conftest import ROOT, run_loop, small_config
from tests.inprocess_grid import InProcessGrid


def zo_config(**overrides):
    flat = {"algorithm": "fedkseed", "zo-seeds": 256, "zo-steps": 6, "batch-size": 2,
            "fraction-evaluate": 0.0, "max-new-tokens": 2, "eval-examples": 8}
    flat.update(overrides)
    return small_config(**flat)


def _run(cfg, num_nodes=3, tamper=None):
    rows = []
    grid = InProcessGrid(client_app, num_nodes, cfg.to_flat(), tamper=tamper)
    accumulated = run_loop(grid, cfg, rows.append)["accumulated"]
    return rows, accumulated, grid


def test_payload_is_under_18_kilobytes_at_paper_scale(monkeypatch):
    """K=4096, tau=200: 4096 float32 down + 200 (uint16, float32) pairs up = 17,712 B of
    payload, and the whole messages (keys, identity, metrics, framing) <= 18,000 B, counted by
    the round loop. The ZO step and the server's evaluation are stubbed: they change no size
    (a scalar is a float32 either way) and took ~40 min on a loaded 2-core machine."""
    from fedtune.algorithms.fedkseed import server as fedkseed_server
    from fedtune.seeded import ZOStepResult

    gen = np.random.default_rng(0)
    monkeypatch.setattr(fedkseed_client, "zo_step", lambda params, loss_fn, **kw: ZOStepResult(
        kw["seed_index"], float(gen.normal()), False, 6.0, 6.1))
    monkeypatch.setattr(fedkseed_server.FedKSeedServer, "evaluate", lambda self, a: {})
    cfg = zo_config(**{"zo-seeds": 4096, "zo-steps": 200, "batch-size": 1,
                       "num-server-rounds": 1, "fraction-train": 1.0})
    rows, _, _ = _run(cfg, num_nodes=2)
    r = rows[1]
    payload = r["payload_down_per_client"] + r["payload_up_per_client"]
    whole = r["bytes_down_per_client"] + r["bytes_up_per_client"]
    assert payload == 17_712, r
    assert whole <= 18_000, r  # 16,651 + 1,336 = 17,987 (18,076 with the identity's fields)
    print(f"FedKSeed K=4096 tau=200: payload {payload:.0f} B, whole messages {whole:.0f} B")


def test_the_round_config_carries_the_identity_digest_and_clients_compare_it_in_full():
    """The server sends 128 bits of SHA-256 over the model fingerprint, lr, eps and the pool's
    fingerprint instead of the fields; any field's difference, or any character of the digest,
    refuses the round."""
    from fedtune.algorithms import resolve
    from fedtune.seeded.shared import IDENTITY, identity_digest, identity_mismatch

    cfg = zo_config()
    conf = resolve(cfg).server(cfg).train_config(1)
    mine = zo_model_for(cfg).identity
    assert set(mine) == {"model", "pool", "zo-lr", "zo-eps"}
    assert set(conf) == {IDENTITY} and len(conf[IDENTITY]) == 22  # 128 bits, base64url
    assert conf[IDENTITY] == identity_digest(mine) and identity_mismatch(mine, conf) is None
    for key in mine:  # another model, pool, lr or eps gives another digest
        other = {**mine, key: str(mine[key]) + "1"}
        assert identity_digest(other) != conf[IDENTITY]
        assert "differ from the server's (its identity digest)" in identity_mismatch(other, conf)
    for at in range(22):  # every character counts
        digest = conf[IDENTITY]
        wrong = digest[:at] + ("A" if digest[at] != "A" else "B") + digest[at + 1:]
        assert identity_mismatch(mine, {IDENTITY: wrong}) is not None
    with pytest.raises(ValueError, match="identity digest"):
        fedkseed_client.train(cfg, np.zeros(256, np.float32), 1, Node("client-0000", 0, 3),
                              {IDENTITY: identity_digest({**mine, "zo-lr": "0.5"})})


def test_pro_sends_importance_as_one_byte_per_seed():
    cfg = zo_config(algorithm="fedkseed-pro", **{"num-server-rounds": 2})
    rows, _, grid = _run(cfg)
    sent = [m for m in grid.sent if m.metadata.message_type == "train"]
    assert all(len(m.content["config"]["importance"]) == 256 for m in sent)
    zo = rows[2]["payload_down_per_client"] - _run(zo_config(**{"num-server-rounds": 2}))[0][2][
        "payload_down_per_client"]
    assert zo == 256


def test_pro_probabilities_survive_quantization():
    pool = SeedPool.from_run_seed(0, 64)
    rng = np.random.default_rng(0)
    pool.update(rng.integers(0, 64, 300), rng.normal(0, 5, 300).astype(np.float32))
    imp = pool.importance()  # the paper's formula, unquantised: softmax of min-max-normalised
    exact = np.exp((imp - imp.min()) / (imp.max() - imp.min()))
    exact /= exact.sum()
    wired = probabilities_from(encode_importance(pool), 64)
    np.testing.assert_allclose(wired, exact, rtol=5e-3)
    assert wired.sum() == pytest.approx(1.0)


def test_all_parties_hold_the_canonical_model_bit_for_bit(tmp_path):
    """Clients that skip rounds, a shared version cache, and an independent process agree."""
    cfg = zo_config(**{"num-server-rounds": 3, "fraction-train": 0.5,
                       "cache-dir": str(tmp_path / "cache")})
    rows, accumulated, _ = _run(cfg, num_nodes=4)
    assert all(r["clients"] == 2 for r in rows[1:])
    assert np.count_nonzero(accumulated) > 0
    from fedtune.algorithms.fedkseed import model as zo_model

    zm = zo_model_for(cfg)
    zm.load(accumulated)
    here = zm.checksum()
    zo_model._cached.cache_clear()  # a fresh process: adopts the version the server published
    fresh = zo_model_for(cfg)
    fresh.load(accumulated, cfg.output.cache_dir)
    assert fresh.checksum() == here and fresh.applied == [0]
    np.save(tmp_path / "a.npy", accumulated)
    code = (
        "import json, sys, numpy as np\n"
        "from fedtune.config import Config\n"
        "from fedtune.algorithms.fedkseed.model import zo_model_for\n"
        "cfg = Config.from_flat(json.loads(sys.argv[1]))\n"
        "zm = zo_model_for(cfg)\n"
        "zm.load(np.load(sys.argv[2]))\n"
        "print(zm.checksum())\n"
    )
    flat = {k: v for k, v in cfg.to_flat().items() if k != "cache-dir"}
    out = subprocess.run([sys.executable, "-c", code, json.dumps(flat), str(tmp_path / "a.npy")],
                         capture_output=True, text=True, cwd=ROOT, check=True).stdout.split()
    assert out[-1] == here


def test_the_version_is_the_weighted_average_of_client_deltas():
    cfg = zo_config(**{"num-server-rounds": 1, "fraction-train": 1.0})
    rows, accumulated, _ = _run(cfg)
    zm = zo_model_for(cfg)
    start = np.zeros_like(accumulated)
    zm.store.load_w0()
    w0s = [p.detach().clone() for p in zm.params]
    nodes = [Node(f"client-{p:04d}", p, 3) for p in range(3)]
    deltas, counts = [], []
    for node in nodes:  # each client's own round: its full delta from the version
        res = fedkseed_client.train(cfg, start, 1, node, zm.identity)
        deltas.append([p.detach().clone() - w for p, w in zip(zm.params, w0s, strict=True)])
        counts.append(res.num_examples)
    assert all(float(d[0].abs().max()) > 0 for d in deltas)  # every client moved
    weights = [n / sum(counts) for n in counts]
    zm.load(accumulated)
    for i, (p, w0) in enumerate(zip(zm.params, w0s, strict=True)):
        fedavg = w0 + sum(wt * d[i] for wt, d in zip(weights, deltas, strict=True))
        torch.testing.assert_close(p, fedavg, rtol=0, atol=2e-6)


@pytest.mark.parametrize("corrupt, reason", [
    (lambda idx, g: (np.where(idx == idx[0], 300, idx), g), "bad seed pairs"),
    (lambda idx, g: (idx, np.where(np.arange(g.size) == 1, np.nan, g)), "bad seed pairs"),
    (lambda idx, g: (np.append(idx, idx[0]), np.append(g, g[0])), "at most zo-steps=6"),
])
def test_bad_replies_are_dropped_and_logged(corrupt, reason, caplog):
    from fedtune.seeded import unpack_pairs

    def tamper(node_id, reply):
        if reply.metadata.message_type == "train" and node_id == 1001:
            idx, g = unpack_pairs(reply.content["zo"]["pairs"], 256)
            idx, g = corrupt(idx, g)
            # pack_pairs validates, so write the corrupt bytes by hand
            blob = idx.astype("<u2").tobytes() + g.astype("<f4").tobytes()
            reply.content["zo"] = ConfigRecord({"pairs": blob})
        return reply

    with caplog.at_level("WARNING", logger="fedtune"):
        rows, accumulated, _ = _run(zo_config(**{"fraction-train": 1.0}), tamper=tamper)
    assert all(r["dropped"] == 1 and r["clients"] == 2 for r in rows[1:])
    assert "dropped reply from client-0000" in caplog.text and reason in caplog.text
    assert np.isfinite(accumulated).all()


def test_loss_decreases_over_rounds():
    rows, _, _ = _run(zo_config(**{"num-server-rounds": 3, "zo-steps": 20, "batch-size": 4,
                                   "fraction-train": 1.0}))
    assert rows[-1]["eval_loss"] < rows[0]["eval_loss"]


class _Aggregator:
    """FedKSeed's aggregation with the options in ``keys``, keeping its momentum."""

    def __init__(self, **keys):
        self.options = zo_config(**keys).seeds
        self.momentum = np.zeros(256, np.float32)

    def aggregate(self, a, replies):
        from fedtune.strategies.seeds import aggregate, robust_clip

        clipped = robust_clip(replies, self.options.seeds_robust_clip)
        new, self.momentum = aggregate(a, clipped, self.options, self.momentum)
        return new


def _honest_replies(seed=0, n_clients=5, tau=6):
    rng = np.random.default_rng(seed)
    return [(rng.integers(0, 256, tau), rng.normal(0, 1, tau).astype(np.float32), 10 + i)
            for i in range(n_clients)]


def test_server_momentum_on_the_accumulated_vector():
    server = _Aggregator(**{"seeds-server-momentum": 0.5, "seeds-equal-weights": True})
    plain = _Aggregator(**{"seeds-equal-weights": True})
    r1, r2 = _honest_replies(1), _honest_replies(2)
    a0 = np.zeros(256, np.float32)
    d1 = plain.aggregate(a0, r1)
    d2 = plain.aggregate(a0, r2)
    a1 = server.aggregate(a0, r1)
    a2 = server.aggregate(a1, r2)
    np.testing.assert_allclose(a1, d1, rtol=1e-6)
    np.testing.assert_allclose(a2, d1 + 0.5 * d1 + d2, rtol=1e-5, atol=1e-6)


def test_robust_clip_bounds_a_scaled_up_client():
    clean = _honest_replies(3)
    attacked = [(i, g * (100 if k == 0 else 1), n) for k, (i, g, n) in enumerate(clean)]
    a0 = np.zeros(256, np.float32)
    base = _Aggregator().aggregate(a0, clean)
    hit = _Aggregator().aggregate(a0, attacked)
    robust_clean = _Aggregator(**{"seeds-robust-clip": 3.0}).aggregate(a0, clean)
    robust_hit = _Aggregator(**{"seeds-robust-clip": 3.0}).aggregate(a0, attacked)
    harm = np.linalg.norm(hit - base) / np.linalg.norm(base)
    robust_harm = np.linalg.norm(robust_hit - robust_clean) / np.linalg.norm(robust_clean)
    assert harm > 10 and robust_harm < 1.0, (harm, robust_harm)


def test_a_seed_pool_beyond_the_exact_versions_limit_is_refused_before_any_engine(tmp_path):
    """zo-seeds=7577 passed the config (up to 2^32) and failed in the version store at start-up."""
    import os

    from tests.test_cli_errors import CLI

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "FLWR_TELEMETRY_ENABLED": "0"}
    done = subprocess.run([sys.executable, "-c", CLI, "simulate", "--output-dir",
                           str(tmp_path / "runs"), "--run-config",
                           "algorithm='fedkseed' zo-seeds=7577"],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert done.returncode == 2, done.stderr
    assert done.stderr == ("fedtune: zo-seeds=7577 must be in [1, 7576]: larger seed pools could "
                           "overflow the exact model versions' integer sums.\n")
    assert done.stdout.strip() == "ray imported: False"
    zo_config(**{"zo-seeds": 7576})  # the limit itself is taken
