"""Secure aggregation through fedtune's round loop on an in-process Grid: what the server
receives is masked (uniform in Z_2^32), the unmasked sum is exact, a SecAgg run matches the
plain run within quantisation, dropouts and bad replies cost a node or a round, never the run.
(The protocol's own unit tests are in test_secagg_protocol.py.)"""

import logging

import numpy as np
import pytest
from flwr.app import ConfigRecord, Error, Message
from scipy import stats

import fedtune.flower.secure as secure
import fedtune.privacy.sums as sums
from client_app.app import app
from fedtune.algorithms import resolve
from fedtune.config import Config, ConfigError
from fedtune.payloads import KINDS
from fedtune.privacy.sums import EXTRA, dequantize_sum, extra_range
from fedtune.secagg.protocol import SecAggServer
from tests.conftest import small_config
from tests.inprocess_grid import InProcessGrid

FAST = {"secagg": "on", "min-train-nodes": 2, "min-available-nodes": 5, "fraction-train": 1.0,
        "fraction-evaluate": 0.0, "num-server-rounds": 1, "local-steps": 2,
        "examples-per-client": 16, "eval-examples": 8, "max-new-tokens": 2, "eval-every": 9}
ZO = {"algorithm": "fedkseed", "zo-seeds": 64, "zo-steps": 6, "batch-size": 2}


@pytest.fixture
def spies(monkeypatch):
    """Record each node's float vector, its quantised form and its masked upload, and every sum
    the server unmasks."""
    seen = {"vectors": [], "plain": [], "masked": [], "sums": []}

    def to_vector(*args, **kwargs):
        vec = original["to_vector"](*args, **kwargs)
        seen["vectors"].append(vec)
        return vec

    def mask(state, ciphertexts, vector):
        state, y = original["mask"](state, ciphertexts, vector)
        seen["plain"].append((state["index"], vector.copy()))
        seen["masked"].append(y.copy())
        return state, y

    def finish(self, replies):
        total = original["finish"](self, replies)
        seen["sums"].append((list(self.survivors), total.copy()))
        return total

    original = {"to_vector": sums.to_vector, "mask": secure.client_mask,
                "finish": SecAggServer.finish}
    monkeypatch.setattr(sums, "to_vector", to_vector)
    monkeypatch.setattr(secure, "client_mask", mask)
    monkeypatch.setattr(SecAggServer, "finish", finish)
    return seen


def run(keys, tamper=None, nodes=5, run_id=1):
    """The round loop on an in-process grid, the strategy bound to Flower's run ``run_id``
    (the grid's nodes run in run 1)."""
    from fedtune.flower.loop import run_rounds
    from fedtune.strategies import build_strategy

    cfg = small_config(**{**FAST, **keys})
    algorithm = resolve(cfg)
    server = algorithm.server(cfg)
    strategy = build_strategy(cfg, algorithm.payload, server)
    if cfg.secagg.enabled:
        strategy.bind_run(run_id, "")
    rows = []
    run_rounds(InProcessGrid(app, nodes, cfg.to_flat(), tamper=tamper), cfg, server, strategy,
               rows.append, wait_for_nodes=1)
    return rows


@pytest.mark.parametrize("algo", ["fedit", "fedkseed"])
def test_the_server_sees_only_uniform_masks_and_unmasks_the_exact_sum(algo, spies, one_thread):
    rows = run(ZO if algo == "fedkseed" else {})
    assert rows[1]["clients"] == 5 and not rows[1].get("skipped")
    plain = dict(spies["plain"])
    for (_, x), y in zip(spies["plain"], spies["masked"], strict=True):
        assert np.mean(x == y) < 1e-3  # every upload differs from its plaintext...
        counts = np.bincount(y >> np.uint32(24), minlength=256)  # ...and its top byte is
        assert stats.chisquare(counts).pvalue > 1e-6  # uniform (the plaintext's is not)
        assert stats.chisquare(np.bincount(x >> np.uint32(24), minlength=256)).pvalue < 1e-6
    survivors, total = spies["sums"][0]
    assert np.array_equal(total, sum(plain[i] for i in survivors).astype(np.uint32))
    # ...and dequantised it is the float sum of the clients' vectors within the quantisation
    cfg = Config.from_flat({**FAST, **(ZO if algo == "fedkseed" else {})})
    payload = KINDS["seeds" if algo == "fedkseed" else "arrays"]
    r, bits = cfg.secagg.clip_range_for(payload), cfg.secagg.secagg_bits
    exact = sum(spies["vectors"])
    summed = dequantize_sum(total, 5, r, bits)
    step = np.concatenate([np.full(exact.size - EXTRA, 2 * r), np.full(EXTRA, 2 * extra_range(
        bits))]) / (2**bits - 1)
    assert np.all(np.abs(summed - exact) <= 5 * step)


@pytest.mark.parametrize("algo", ["fedit", "fedkseed"])
def test_a_secagg_run_matches_the_plain_run(algo, one_thread):
    keys = {**(ZO if algo == "fedkseed" else {}), "num-server-rounds": 2, "eval-every": 1}
    masked = run(keys)
    plain = run({**keys, "secagg": "off"})
    for a, b in zip(masked[1:], plain[1:], strict=True):
        # the stochastic rounding to 24 bits draws secret randomness (fedtune.privacy.randomness),
        # so the gap varies run to run: up to 1.6e-4 seen over two rounds; a wrong sum is far off
        assert a["eval_loss"] == pytest.approx(b["eval_loss"], rel=1e-3)
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-2)
        assert a["bytes_up_per_client"] > b["bytes_up_per_client"]  # 32 bits a value
        assert 0 < a["extra_bytes_up_per_client"] < a["bytes_up_per_client"]


def test_one_dropout_after_the_share_stage_leaves_the_survivors_exact_sum(spies, one_thread):
    def tamper(node, reply):
        if reply.metadata.message_type == "train" and node == min(grid_nodes):
            return _error(reply)
        return reply

    grid_nodes = [1001 + 7919 * p for p in range(5)]
    rows = run({}, tamper=tamper)
    assert rows[1]["clients"] == 4 and not rows[1].get("skipped")
    survivors, total = spies["sums"][0]
    plain = dict(spies["plain"])  # all 5 masked; one upload was lost
    assert len(survivors) == 4 and len(set(plain) - set(survivors)) == 1
    assert np.array_equal(total, sum(plain[i] for i in survivors).astype(np.uint32))


def _error(reply: Message) -> Message:
    """An error in place of a node's train reply: it crashed after the share stage."""
    return Message(Error(code=1, reason="node lost"), reply_to=reply)


def test_more_dropouts_than_the_threshold_skip_the_round_not_the_run(caplog, one_thread):
    grid_nodes = [1001 + 7919 * p for p in range(5)]
    seen_rounds = []

    def tamper(node, reply):
        if reply.metadata.message_type == "train":
            rnd = len(seen_rounds) // 5 + 1
            seen_rounds.append(node)
            if rnd == 1 and node in grid_nodes[:3]:  # 2 survivors < t = 3 of k = 4
                return _error(reply)
        return reply

    with caplog.at_level(logging.WARNING, logger="fedtune"):
        rows = run({"num-server-rounds": 2}, tamper=tamper)
    assert rows[1].get("skipped") and "could not unmask" in caplog.text
    assert rows[2]["clients"] == 5 and not rows[2].get("skipped")  # the run goes on


def test_a_wrong_length_vector_or_malformed_shares_drop_that_node(caplog, one_thread):
    """Of 7 nodes (k = 6, t = 4, each keeps one share of its own seed): one sends ciphertexts
    for too few neighbours, one a truncated upload, one garbage shares at unmasking; the
    4 honest ones still hold t shares of every secret."""
    grid_nodes = [1001 + 7919 * p for p in range(7)]

    def tamper(node, reply):
        content = reply.content
        if reply.has_error() or "secagg" not in content.config_records:
            return reply
        record = content["secagg"]
        if node == grid_nodes[0] and "masked" in record:  # a truncated upload
            content["secagg"] = ConfigRecord({"masked": record["masked"][:-8]})
        if node == grid_nodes[1] and "ct" in record:  # ciphertexts for too few neighbours
            content["secagg"] = ConfigRecord({"ids": record["ids"][:1], "ct": record["ct"][:1]})
        if node == grid_nodes[2] and "b" in record:  # garbage shares at unmasking
            content["secagg"] = ConfigRecord({"b-ids": record["b-ids"],
                                              "b": [b"x" * 86 for _ in record["b"]]})
        return reply

    with caplog.at_level(logging.WARNING, logger="fedtune"):
        rows = run({"min-available-nodes": 7}, tamper=tamper, nodes=7)
    assert not rows[1].get("skipped")
    assert rows[1]["clients"] == 5 and rows[1]["dropped"] == 1  # 7 - share stage - truncated
    assert "masked vector of" in caplog.text and "secagg share: node" in caplog.text
    assert "ignored" in caplog.text  # node 3's garbage shares; the others reconstruct
    assert np.isfinite(rows[1]["train_loss"])


@pytest.mark.parametrize("keys, words", [
    ({"strategy": "krum"}, "strategy='krum' cannot run with secagg='on'"),
    ({"strategy": "scaffold"}, "control variate"),
    ({"dp": "server"}, "dp='server' cannot run with secagg='on'"),
    ({"dp": "client", "algorithm": "fedkseed-pro"}, "released without noise"),
    ({"min-train-nodes": 1}, "min-train-nodes >= 2"),
    ({"secagg-threshold": 0.5}, "secagg-threshold=0.5 must be in"),
    ({"secagg-neighbours": 3}, "must be an even number"),
])
def test_configs_secagg_cannot_run_are_one_sentence_errors(keys, words):
    with pytest.raises(ConfigError, match=words):
        resolve(Config.from_flat({"secagg": "on", "fraction-evaluate": 0.0, **keys}))


def test_values_beyond_the_clip_range_are_counted_in_the_sum(caplog, one_thread):
    with caplog.at_level(logging.WARNING, logger="fedtune"):
        rows = run({"secagg-clip-range": 1e-4})
    assert rows[1]["secagg_clipped_values"] > 1000 and "raise it" in caplog.text
    assert run({})[1]["secagg_clipped_values"] == 0


def test_the_protocol_stages_import_no_torch():
    """A deployed ClientApp is a new process per message: a stage must not pay for torch."""
    import subprocess
    import sys

    code = "import sys, fedtune.flower.secure; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_server_optimizers_step_from_the_unmasked_mean(monkeypatch, one_thread):
    """FedAdam needs only the mean: under SecAgg the mean it steps from is the plain run's
    within what the stochastic rounding of the weighted sum and of the example count can
    move it. Its end point is compared loosely: Adam divides by sqrt(v), so a coordinate
    whose mean update is ~0 turns that rounding into a +-lr step (the eval loss moved by up
    to 1.9e-4 relative over 8 runs here)."""
    from flwr.serverapp.strategy import FedAvg

    from fedtune.wire import NUM_EXAMPLES

    means, starts, counts = [], [], []
    inner = FedAvg.aggregate_train

    def flat(arrays):
        values = arrays.values() if isinstance(arrays, dict) else arrays.to_numpy_ndarrays()
        return np.concatenate([np.asarray(a, np.float64).ravel() for a in values])

    def spy(self, server_round, replies):
        replies = list(replies)
        arrays, metrics = inner(self, server_round, replies)
        if server_round == 1:  # FedAdam's x_t, as the clients receive it (16-bit)
            starts.append(flat(self.current_arrays).astype(np.float16).astype(np.float64))
            means.append(flat(arrays))
            counts.append(sum(r.content["metrics"][NUM_EXAMPLES] for r in replies))
        return arrays, metrics

    monkeypatch.setattr(FedAvg, "aggregate_train", spy)
    keys = {"strategy": "fedadam", "server-lr": 0.01, "num-server-rounds": 2, "eval-every": 2}
    masked, plain = run(keys), run({**keys, "secagg": "off"})
    cfg, clients, total = Config.from_flat(FAST), masked[1]["clients"], counts[1]
    bits = cfg.secagg.secagg_bits
    step = 2 * cfg.secagg.clip_range_for(KINDS["arrays"]) / (2**bits - 1)
    count_step = 2 * extra_range(bits) / (2**bits - 1)  # the summed n is rounded too
    update = np.abs(means[1] - starts[1])
    bound = (clients * step + update * clients * count_step) / (total - clients * count_step)
    gap = np.abs(means[0] - means[1])
    assert gap.max() > 0 and np.all(gap <= bound + 1e-7)  # + float32's rounding of the mean
    assert bound.max() < 0.01 * update.max()  # so a wrong sum is far off
    assert masked[2]["eval_loss"] == pytest.approx(plain[2]["eval_loss"], rel=1e-3)
    assert masked[2]["eval_loss"] < masked[0]["eval_loss"]


def test_fedkseed_pro_sums_the_seed_statistics_securely(one_thread):
    """Pro's importance comes from the clients' per-seed statistics: under SecAgg their sum
    (2 K more values per upload) gives the plain run's statistics within quantisation: one
    round, where both runs' clients start from the same model (from round 2 on the masked run's
    model differs by the quantised mean, so do its scalars), every sum within one stochastic
    rounding step per client."""
    from fedtune.flower.loop import run_rounds
    from fedtune.strategies import build_strategy

    pools = []
    for secagg in ("on", "off"):
        cfg = small_config(**{**FAST, **ZO, "algorithm": "fedkseed-pro", "secagg": secagg,
                              "num-server-rounds": 1})
        algorithm = resolve(cfg)
        server = algorithm.server(cfg)
        strategy = build_strategy(cfg, algorithm.payload, server)
        if secagg == "on":
            strategy.bind_run(1, "")
        rows = []
        run_rounds(InProcessGrid(app, 5, cfg.to_flat()), cfg, server, strategy, rows.append,
                   wait_for_nodes=1)
        pools.append((server.pool, rows))
    (masked, rows_masked), (plain, rows_plain) = pools
    assert np.array_equal(masked.counts, plain.counts)  # integers: exact
    assert masked.counts.sum() == 5 * 6  # clients x zo-steps
    cfg = Config.from_flat(FAST)
    step = 2 * cfg.secagg.clip_range_for(KINDS["seeds"]) / (2**cfg.secagg.secagg_bits - 1)
    gap = np.abs(masked.abs_sums - plain.abs_sums)
    assert gap.max() > 0 and np.all(gap < 5 * step + 1e-9)  # 5 clients, < 1 step each
    assert rows_masked[-1]["eval_loss"] == pytest.approx(rows_plain[-1]["eval_loss"], rel=1e-4)


@pytest.mark.parametrize("algo", ["fedit", "fedkseed"])
def test_client_clipped_dp_runs_on_the_secure_sum(algo, one_thread):
    """dp='client' + secagg: nodes clip, the server unmasks only the sum of clipped updates and
    adds the noise to it. Without noise it gives DP's own result; with noise the same epsilon."""
    keys = {**(ZO if algo == "fedkseed" else {}), "num-server-rounds": 2, "eval-every": 2,
            "dp": "client"}
    loose = {"dp-noise-multiplier": 0.0,  # C = the secure sum's range (larger is refused)
             "dp-clip-norm": 65536.0 if algo == "fedkseed" else 64.0}
    both, dp_only = run({**keys, **loose}), run({**keys, **loose, "secagg": "off"})
    assert both[2]["eval_loss"] == pytest.approx(dp_only[2]["eval_loss"], rel=1e-4)
    noisy = {"dp-noise-multiplier": 0.8}
    both, dp_only = run({**keys, **noisy}), run({**keys, **noisy, "secagg": "off"})
    assert [r["dp_epsilon"] for r in both] == [r["dp_epsilon"] for r in dp_only]
    assert both[2]["dp_epsilon"] > 0 and both[2]["extra_bytes_up_per_client"] > 0


# ---- secret randomness and the run's binding (issue #25) ----------------------------------
def test_a_node_refuses_a_context_that_names_another_run(caplog, one_thread):
    """The keys' context binds Flower's run id: nodes of run 1 refuse a server of run 2."""
    with caplog.at_level(logging.WARNING, logger="fedtune"):
        rows = run({}, run_id=2)
    assert rows[1]["skipped"] and rows[1]["clients"] == 0
    assert "does not name this node's run 1" in caplog.text
    assert not run({})[1].get("skipped")  # the same nodes take part in their own run


def test_the_graph_and_the_rounding_are_not_the_run_seeds(monkeypatch, one_thread):
    """Clients know the seed: a graph or rounding drawn from it would be theirs to predict."""
    import copy

    import fedtune.strategies.secagg as strategy_module
    from fedtune.seeding import derive_seed, rng

    graphs, gens = [], []

    def neighbours(m, k, seed):
        graphs.append(seed)
        return original(m, k, seed)

    def quantize_vector(vector, clip_range, bits, gen):
        gens.append(copy.deepcopy(gen))
        return quantize(vector, clip_range, bits, gen)

    original, quantize = strategy_module.neighbours, sums.quantize_vector
    monkeypatch.setattr(strategy_module, "neighbours", neighbours)
    monkeypatch.setattr(sums, "quantize_vector", quantize_vector)
    run({"seed": 4})
    run({"seed": 4})
    assert len(graphs) == 2 and graphs[0] != graphs[1]
    assert derive_seed(4, "secagg-graph", 1) not in graphs  # the old derivation
    old = rng(4, "secagg-rounding", 1, "client-0000").random(8)
    assert not any(np.array_equal(g.random(8), old) for g in gens)
    assert len(gens) == 10


def test_under_dp_the_secure_sum_carries_contributions_and_the_count_only(spies, one_thread):
    """No loss (n x train-loss) and n = 1 in each node's vector: nothing unnoised per client."""
    rows = run({"dp": "client", "dp-noise-multiplier": 1.0})
    assert all(v[-3] == 1.0 and v[-2] == 0.0 and v[-1] == 0.0 for v in spies["vectors"])
    assert rows[1]["train_loss"] is None and rows[1]["secagg_clipped_values"] == 0


def test_client_clipping_leaves_room_for_the_rounding():
    """Stochastic rounding moves each value by under one step: a node clips to C - step sqrt(d)
    so that what the sum adds has norm <= C (the sensitivity the accountant assumes); clipped
    to C itself it would exceed C."""
    from fedtune.payloads import SeedsPayload
    from fedtune.privacy.sums import rounding_margin
    from fedtune.secagg.masking import dequantize, quantize

    d, c, r, bits = 10_000, 1.0, 1.0, 8
    margin = rounding_margin(SeedsPayload(d), {}, r, bits)
    assert margin == pytest.approx(2 / 255 * 100)  # 0.78
    gen = np.random.default_rng(0)
    over = []
    for bound in (c - margin, c):
        norms = []
        for _ in range(20):
            x = gen.normal(size=d)
            x *= bound / np.linalg.norm(x)
            q = quantize(x, r, bits, gen)
            norms.append(np.linalg.norm(dequantize(q, 1, r, bits)))
        over.append(max(norms) > c)
    assert over == [False, True]
