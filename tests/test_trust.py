"""The trust policy (``fedtune.strategies.trust``) through fedtune's round loop on an in-process
Grid: a client lying about its example count or scaling its update, for FedAvg over arrays and
for FedKSeed's seed aggregation; each payload's own bound (FedKSeed's per-seed sums, Ferret's
blocks x seeds, the LoRA product of FLoRA, FedEx-LoRA and FFA-LoRA); the deployment default;
the reply checks' overflow limits."""

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedtune.algorithms.base import ServerHooks
from fedtune.config import Config, ConfigError
from fedtune.flower.loop import run_rounds
from fedtune.payloads import BlockSeedsPayload, SeedsPayload
from fedtune.seeded import SeedPool, pack_pairs, unpack_pairs
from fedtune.strategies import build_strategy
from fedtune.strategies.trust import TrustPolicy, resolve_weights
from fedtune.wire import check_arrays, check_metrics
from fedtune.wire.flower import to_arrayrecord
from tests.inprocess_grid import InProcessGrid, identify_by_partition
from tests.test_strategies import DELTAS, EXAMPLES, X0  # the same toy clients' updates

N = 5
LIAR = N - 1  # partition of the client that lies
LIAR_NAME = f"client-{LIAR:04d}"
K = 16  # seed pool of the seeds toy
SEEDS = [(np.array([p, p + 5]), np.array([0.5, -0.25], np.float32) * (p + 1)) for p in range(N)]

toy = ClientApp()


toy.query("identify")(identify_by_partition)


@toy.train()
def _train(msg: Message, context) -> Message:
    """Client p replies the global array + DELTAS[p] (arrays) or its SEEDS[p] pairs (seeds)."""
    p = int(context.node_config["partition-id"])
    metrics = MetricRecord({"num-examples": EXAMPLES[p], "train-loss": 1.0})
    if "w" in msg.content["arrays"]:
        w = msg.content["arrays"]["w"].numpy()
        return Message(RecordDict({"arrays": to_arrayrecord({"w": w + DELTAS[p]}),
                                   "metrics": metrics}), reply_to=msg)
    pairs = pack_pairs(*SEEDS[p], K)
    return Message(RecordDict({"zo": ConfigRecord({"pairs": pairs}), "metrics": metrics}),
                   reply_to=msg)


class ArraysServer(ServerHooks):
    wire_dtype = None  # float32 both ways: exact hand computations

    def __init__(self) -> None:
        self.seen: list[dict[str, np.ndarray]] = []

    def initial_arrays(self):
        return {"w": X0.copy()}

    def check_reply(self, content):
        return check_arrays(content.arrays["arrays"], {"w": (2, 2)}) or check_metrics(content)

    def train_config(self, server_round):
        return {"lr": 0.1}

    def evaluate(self, arrays):
        self.seen.append({k: v.copy() for k, v in arrays.items()})
        return {"eval_loss": 0.0}


class SeedsServer(ArraysServer):
    pool = SeedPool(np.arange(K))
    payload = SeedsPayload(K)

    def initial_arrays(self):
        return {"accumulated": np.zeros(K, np.float32)}

    def check_reply(self, content):
        unpack_pairs(content.configs["zo"]["pairs"], K)
        return check_metrics(content)


def lie(count: float = 1e9, scale: float = 1.0):
    """The liar's reply: ``count`` examples, its update (or scalars) times ``scale``."""

    def tamper(node_id: int, reply: Message) -> Message:
        if reply.metadata.message_type != "train" or node_id != max(nodes):
            return reply
        reply.content["metrics"]["num-examples"] = count
        if "arrays" in reply.content.array_records:
            w = reply.content["arrays"]["w"].numpy()
            reply.content["arrays"] = ArrayRecord({"w": Array(X0 + scale * (w - X0))})
        else:
            idx, g = unpack_pairs(reply.content["zo"]["pairs"], K)
            reply.content["zo"]["pairs"] = pack_pairs(idx, g * np.float32(scale), K)
        return reply

    nodes = [1001 + 7919 * p for p in range(N)]
    return tamper


def run(payload: str, tamper=None, **keys) -> np.ndarray:
    """The global model after one round: w (arrays) or A (seeds)."""
    cfg = Config.from_flat({"num-server-rounds": 1, "fraction-train": 1.0,
                            "fraction-evaluate": 0.0, "min-train-nodes": 1,
                            "min-available-nodes": N, "zo-seeds": K,
                            **({"algorithm": "fedkseed"} if payload == "seeds" else {}), **keys})
    algo = ArraysServer() if payload == "arrays" else SeedsServer()
    grid = InProcessGrid(toy, N, cfg.to_flat(), tamper=tamper)
    run_rounds(grid, cfg, algo, build_strategy(cfg, payload, algo), lambda row: None,
               wait_for_nodes=1)
    return next(iter(algo.seen[-1].values()))


def liar_update(payload: str) -> np.ndarray:
    if payload == "arrays":
        return X0 + DELTAS[LIAR]
    return np.bincount(SEEDS[LIAR][0], SEEDS[LIAR][1], minlength=K).astype(np.float32)


@pytest.mark.parametrize("payload", ["arrays", "seeds"])
def test_a_billion_examples_take_over_only_when_reports_are_trusted(payload, caplog):
    honest = run(payload)
    taken = run(payload, lie(1e9))
    assert np.allclose(taken, liar_update(payload), atol=1e-5)  # reported: the liar wins
    assert not np.allclose(honest, liar_update(payload), atol=1e-2)

    median = sorted(EXAMPLES)[(N - 1) // 2]  # 20
    with caplog.at_level("WARNING", logger="fedtune"):
        capped = run(payload, lie(1e9), **{"example-weights": "capped"})
    # lying buys exactly what an honest client with 3 x the median examples gets
    np.testing.assert_array_equal(capped, run(payload, lie(3 * median),
                                              **{"example-weights": "capped"}))
    assert f"capped the example count of {LIAR_NAME} from 1e+09 to {3 * median}" in caplog.text
    np.testing.assert_array_equal(
        run(payload, lie(1e9), **{"example-weights": "capped", "max-examples": 25}),
        run(payload, lie(25), **{"example-weights": "capped", "max-examples": 25}))

    equal = run(payload, lie(1e9), **{"example-weights": "equal"})
    np.testing.assert_array_equal(equal, run(payload, **{"example-weights": "equal"}))
    if payload == "arrays":
        np.testing.assert_allclose(equal, X0 + np.mean(DELTAS, axis=0), rtol=1e-6)


@pytest.mark.parametrize("payload", ["arrays", "seeds"])
def test_the_norm_bound_scales_an_outlier_down_to_ratio_times_the_median(payload, caplog):
    keys = {"example-weights": "equal", "max-update-norm-ratio": 2.0}
    with caplog.at_level("WARNING", logger="fedtune"):
        bounded = run(payload, lie(EXAMPLES[LIAR], scale=100.0), **keys)
    assert f"scaled the update of {LIAR_NAME} down from norm" in caplog.text
    if payload == "arrays":
        norms = sorted(float(np.linalg.norm(d)) for d in DELTAS)
        limit = 2.0 * norms[(N - 1) // 2]
        liar = DELTAS[LIAR] * (limit / float(np.linalg.norm(DELTAS[LIAR])))
        want = X0 + np.mean([*DELTAS[:LIAR], liar], axis=0)
    else:
        norms = sorted(float(np.linalg.norm(g)) for _, g in SEEDS)
        limit = 2.0 * norms[(N - 1) // 2]
        scalars = [g for _, g in SEEDS]
        scalars[LIAR] = scalars[LIAR] * (limit / float(np.linalg.norm(scalars[LIAR])))
        want = sum(np.bincount(i, g, minlength=K) for (i, _), g in zip(SEEDS, scalars,
                                                                        strict=True)) / N
    np.testing.assert_allclose(bounded, want, rtol=1e-5, atol=1e-6)
    off = run(payload, lie(EXAMPLES[LIAR], scale=100.0), **{"example-weights": "equal"})
    assert np.abs(off - bounded).max() > 1.0  # the test can fail: without it the liar pulls


def test_a_liar_repeating_one_seed_is_bounded_by_its_per_seed_sums(caplog):
    """FedKSeed's model moves by each seed's summed scalars: tau pairs of one seed with scalar g
    move it by tau |g| while their scalars' norm is sqrt(tau) |g|, which passed the old bound
    on the scalars. The bound is on the per-seed sums."""
    tau, g, ratio = 16, 0.5, 2.0

    def repeat(node_id: int, reply: Message) -> Message:
        if reply.metadata.message_type == "train" and node_id == 1001 + 7919 * LIAR:
            reply.content["zo"]["pairs"] = pack_pairs(np.full(tau, 3),
                                                      np.full(tau, g, np.float32), K)
        return reply

    honest = [np.bincount(i, w, minlength=K) for i, w in SEEDS[:LIAR]]
    limit = ratio * sorted([*map(np.linalg.norm, honest), tau * g])[(N - 1) // 2]
    assert np.sqrt(tau) * g < limit  # its scalars' norm is within the bound
    keys = {"example-weights": "equal"}
    with caplog.at_level("WARNING", logger="fedtune"):
        bounded = run("seeds", repeat, **keys, **{"max-update-norm-ratio": ratio})
    assert f"scaled the update of {LIAR_NAME} down from norm 8 to {limit:.4g}" in caplog.text
    liar = N * bounded - sum(honest)  # its contribution to A (weights 1/N)
    np.testing.assert_allclose(np.linalg.norm(liar), limit, rtol=1e-5)
    assert np.count_nonzero(liar) == 1
    unbounded = N * run("seeds", repeat, **keys) - sum(honest)
    assert np.linalg.norm(unbounded) > 2 * limit  # the test can fail: without it, tau g


def _zo_reply(entries, coefficients, pool: int) -> Message:
    sent = Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=7, message_type="train")
    pairs = pack_pairs(entries, np.asarray(coefficients, np.float32), pool)
    return Message(RecordDict({"zo": ConfigRecord({"pairs": pairs}),
                               "metrics": MetricRecord({"num-examples": 10})}), reply_to=sent)


def _bound(payload, replies, ratio, sent=None, wire_dtype=None) -> None:
    policy = TrustPolicy(Config.from_flat({"max-update-norm-ratio": ratio}).strategy, payload,
                         wire_dtype)
    policy.bound(replies, [f"client-{i:04d}" for i in range(len(replies))], sent or {})


def test_a_ferret_liar_is_bounded_in_its_own_pool_weighted_by_block_size(caplog):
    """Ferret's entries are (block, seed) pairs of its own pool, not FedKSeed's K seeds; block
    b's coefficients reconstruct an update of expected norm sqrt(sigma2 d_b) ||c_b||, so a liar
    that moves its coefficients into the largest block is bounded by what it does to w."""
    seeds, sizes, ratio = 4, [10, 10, 4000], 3.0  # block 2 is 400x as large
    payload = BlockSeedsPayload.of(seeds, sizes, sigma2=1.0)
    assert payload.pool_size == 12
    honest = [([0, 5, 8 + i], [1.0, -1.0, 0.05]) for i in range(4)]
    liar = ([8, 9, 10], [0.6, -0.6, 0.6])  # a smaller coefficient norm, all in the big block
    replies = [_zo_reply(*r, 12) for r in [*honest, liar]]
    norms = [payload.norm(dict(r.content["zo"]), {}) for r in replies]
    limit = ratio * sorted(norms)[2]
    np.testing.assert_allclose(norms[0], np.sqrt(10 * 2 + 4000 * 0.05 ** 2))
    assert norms[4] > 10 * norms[0]
    uniform = SeedsPayload(12)  # the coefficients' own norm would let the liar through
    flat = [uniform.norm(dict(r.content["zo"]), {}) for r in replies]
    assert flat[4] < min(flat[:4])
    with caplog.at_level("WARNING", logger="fedtune"):
        _bound(payload, replies, ratio)
    assert "scaled the update of client-0004" in caplog.text
    assert caplog.text.count("scaled the update") == 1
    bounded = [payload.norm(dict(r.content["zo"]), {}) for r in replies]
    np.testing.assert_allclose(bounded, [*norms[:4], limit], rtol=1e-6)


def test_the_ferret_norm_is_the_reconstructed_updates_norm():
    """sqrt(sum_b sigma2 d_b ||c_b||^2) is the norm of sum_k c_bk z_k as the parties rebuild it
    (its expectation; within a few % at these sizes)."""
    from fedtune.algorithms.ferret.projection import SIGMA2, reconstruct
    from fedtune.seeded import derive_seeds

    seeds, sizes = 8, [3000, 2000]
    payload = BlockSeedsPayload.of(seeds, sizes, SIGMA2)
    gen = np.random.default_rng(0)
    entries = np.arange(2 * seeds)
    gammas = gen.standard_normal(entries.size).astype(np.float32) * np.repeat([1.0, 5.0], seeds)
    rebuilt = reconstruct(entries, gammas, derive_seeds(0, seeds).tolist(), [0, 1], sizes)
    want = float(np.sqrt(sum(float(t.square().sum()) for t in rebuilt)))
    got = payload.norm({"pairs": pack_pairs(entries, gammas, 2 * seeds)}, {})
    assert abs(got / want - 1) < 0.05, (got, want)


def test_ferret_runs_with_the_norm_bound_and_bounds_a_liar(caplog):
    """One real Ferret round with max-update-norm-ratio (the policy read Ferret's pairs with
    FedKSeed's pool size, zo-seeds, and the run died: ValueError: seed indices must lie in
    [0, 64)); a client that scales its coefficients x100 is scaled back by name."""
    from tests.test_ferret import _run, ferret_config

    cfg = ferret_config(**{"num-server-rounds": 1, "max-update-norm-ratio": 3.0,
                           "local-steps": 1, "batch-size": 2,
                           "eval-examples": 2, "max-new-tokens": 1})
    pool = 34 * 32  # blocks x ferret-seeds of the tiny model

    def scale(node_id: int, reply: Message) -> Message:
        if reply.metadata.message_type == "train" and node_id == 1001 + 7919:
            entries, gammas = unpack_pairs(reply.content["zo"]["pairs"], pool)
            reply.content["zo"]["pairs"] = pack_pairs(entries, gammas * np.float32(100), pool)
        return reply

    with caplog.at_level("WARNING", logger="fedtune"):
        rows, accumulated, _ = _run(cfg, num_nodes=2, tamper=scale)
    assert rows[1]["clients"] == 2 and np.isfinite(accumulated).all()
    assert caplog.text.count("scaled the update of") == 1  # the lower median is the honest one
    assert "scaled the update of client-0001" in caplog.text


def _lora_round(aggregation, ranks=(16, 16, 16), **keys):
    """(cfg, server, strategy, the round's global arrays as the wire delivers them, the full
    adapter the clients start from) for one FedIT round of ``aggregation``."""
    from tests.test_lora_aggregation import _setup

    cfg, server, strategy = _setup(aggregation, **keys)
    sent = server.initial_arrays()
    wire = {k: v.astype(server.wire_dtype).astype(np.float32) for k, v in sent.items()}
    return cfg, server, strategy, sent, server.full_adapter(wire)


def _client_adapters(cfg, before, ranks, seed, step=0.05):
    """Each client's uploaded factors: ``before`` + a random step (its own rank), the
    modules_to_save unchanged."""
    from fedtune.algorithms.fedit.factors import OTHER, A, part

    gen = np.random.default_rng(seed)
    out = []
    for r in ranks:
        adapter = {}
        for k, v in before.items():
            p = part(k)
            if p == OTHER:
                adapter[k] = v.copy()
                continue
            x = v[:r] if p == A else v[:, :r]
            adapter[k] = (x + step * gen.standard_normal(x.shape)).astype(np.float32)
        out.append(adapter)
    return out


def _product_norm(cfg, record, before, restarts=False):
    """||s (B'A' - BA)|| over every layer plus the other arrays' update, densely in float64:
    what one reply adds to the merged model (BA = 0 when the adapter restarts)."""
    from fedtune.algorithms.fedit.factors import OTHER, A, B, key, layers, part

    total = 0.0
    for name in layers(before):
        b0, a0 = (before[key(name, w)].astype(np.float64) for w in (B, A))
        b1, a1 = (record.get(key(name, w), before[key(name, w)]).astype(np.float64)
                  for w in (B, A))
        total += float(np.sum((cfg.lora.scale * (b1 @ a1 - (0 if restarts else b0 @ a0))) ** 2))
    for k, v in record.items():
        if part(k) == OTHER:
            total += float(np.sum((v.astype(np.float64) - before[k]) ** 2))
    return float(np.sqrt(total))


def test_flora_is_measured_and_scaled_by_its_product_not_its_factors(caplog):
    """FLoRA's clients restart from the initial adapter and the server merges sum_i p_i s B_i A_i,
    so a reply's update is s B_i A_i. The old measure (fresh factors against the zeros of the
    unsent A and B) grows with the rank, and scaling both factors by t scaled the merge by t^2."""
    from fedtune.algorithms.fedit.factors import B, layers, select
    from fedtune.flower.hooks import aggregate
    from fedtune.payloads import ArraysPayload
    from tests.test_lora_aggregation import _clients_mean, _replies

    ranks = (4, 4, 64)
    cfg, server, strategy, sent, before = _lora_round("flora", **{"lora-ranks": "4,4,64"})
    adapters = _client_adapters(cfg, before, ranks, seed=0, step=0.1)
    for ad in adapters:  # honest clients whose merged change is the same size, any rank
        norm = _product_norm(cfg, ad, before, restarts=True)
        ad.update({k: (v / norm).astype(np.float32) for k, v in select(ad, (B,)).items()})
    replies = _replies(server, adapters)
    records = [{k: v.numpy() for k, v in r.content["arrays"].items()} for r in replies]
    np.testing.assert_allclose([server.payload.norm(r, sent) for r in records], 1.0, rtol=1e-5)
    old = [ArraysPayload().norm(r, sent) for r in records]
    assert old[2] > 1.5 * sorted(old)[1]  # the rank-64 client: scaled every round before
    with caplog.at_level("WARNING", logger="fedtune"):
        _bound(server.payload, replies, 1.5, sent, server.wire_dtype)
    assert "scaled the update" not in caplog.text

    liar = {**adapters[2], **{k: v * np.float32(100) for k, v in
                              select(adapters[2], (B,)).items()}}  # its product x100
    replies = _replies(server, [*adapters[:2], liar])
    with caplog.at_level("WARNING", logger="fedtune"):
        _bound(server.payload, replies, 1.5, sent, server.wire_dtype)
    assert "scaled the update of client-0002 down from norm 100 to 1.5" in caplog.text
    bounded = {k: v.numpy() for k, v in replies[2].content["arrays"].items()}
    np.testing.assert_allclose(_product_norm(cfg, bounded, before, restarts=True), 1.5,
                               rtol=1e-5)
    # the merge is the clients' mean with the liar's product x 1.5 (its B x 1.5), not x 1.5^2
    aggregate(strategy, server, 1, replies)
    want = [*adapters[:2], {**adapters[2], **{k: v * np.float32(1.5) for k, v in
                                              select(adapters[2], (B,)).items()}}]
    for name in layers(before):
        np.testing.assert_allclose(server.merged.delta[name], _clients_mean(cfg, want, name),
                                   rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("aggregation", ["fedex", "ffa"])
def test_fedex_and_ffa_bound_the_change_of_the_product(aggregation, caplog):
    """FedEx-LoRA merges the exact sum_i p_i s B_i A_i, FFA-LoRA moves the model by
    s (B_i - B) A0 (A frozen): a liar whose factor updates are x100 is bounded by what its
    product changes (FFA exactly, FedEx by the largest scale of both factor updates within
    the bound), and the Gram-matrix norm equals the dense one."""
    from tests.test_lora_aggregation import _replies

    cfg, server, _, sent, before = _lora_round(aggregation)
    adapters = _client_adapters(cfg, before, (16, 16, 16), seed=1, step=0.01)
    liar = {k: before[k] + np.float32(100) * (v - before[k]) for k, v in adapters[2].items()}
    replies = _replies(server, [*adapters[:2], liar])
    records = [{k: v.numpy() for k, v in r.content["arrays"].items()} for r in replies]
    norms = [_product_norm(cfg, r, before) for r in records]
    np.testing.assert_allclose([server.payload.norm(r, sent) for r in records], norms,
                               rtol=1e-6)
    limit = 2.0 * sorted(norms)[1]
    assert norms[2] > 10 * limit
    with caplog.at_level("WARNING", logger="fedtune"):
        _bound(server.payload, replies, 2.0, sent, server.wire_dtype)
    assert caplog.text.count("scaled the update of") == 1
    bounded = _product_norm(cfg, {k: v.numpy() for k, v in replies[2].content["arrays"].items()},
                            before)
    assert limit * (1 - 1e-4) <= bounded <= limit * (1 + 1e-5), (bounded, limit)


def test_honest_rounds_are_untouched_by_the_policy():
    plain = run("arrays")
    np.testing.assert_array_equal(plain, run("arrays", **{"example-weights": "capped",
                                                         "max-update-norm-ratio": 3.0}))


def test_auto_is_capped_through_a_superlink_and_reported_in_simulation(monkeypatch):
    from flwr.superlink.grid import HttpGrid

    import server_app.app as server_app

    seen = []
    monkeypatch.setattr(server_app, "run_server", lambda grid, cfg, **_: seen.append(cfg))
    ctx = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={})
    server_app.main(HttpGrid.__new__(HttpGrid), ctx)
    server_app.main(InProcessGrid(toy, 1, {}), ctx)
    assert [c.strategy.example_weights for c in seen] == ["capped", "reported"]

    cfg = Config.from_flat({"max-examples": 100})
    resolve_weights(cfg.strategy, deployed=False)
    assert cfg.strategy.example_weights == "capped"
    cfg = Config.from_flat({})
    resolve_weights(cfg.strategy, deployed=True, masked=True)  # secagg: counts are hidden
    assert cfg.strategy.example_weights == "reported"
    explicit = Config.from_flat({"example-weights": "equal"})
    resolve_weights(explicit.strategy, deployed=True)
    assert explicit.strategy.example_weights == "equal"


@pytest.mark.parametrize("keys, message", [
    ({"example-weights": "trusted"},
     "example-weights='trusted' is unknown; use one of auto, reported, capped, equal."),
    ({"max-examples-ratio": 0.5}, "max-examples-ratio=0.5 must be at least 1"),
    ({"max-update-norm-ratio": 0.5}, "max-update-norm-ratio=0.5 must be 0 (off) or at least 1"),
    ({"max-examples": -1}, "max-examples=-1 must be >= 0"),
    ({"example-weights": "equal", "max-examples": 10},
     "max-examples=10 applies to example-weights='capped', not 'equal'"),
])
def test_config_errors_are_one_sentence(keys, message):
    with pytest.raises(ConfigError) as err:
        Config.from_flat(keys)
    assert message in str(err.value)
    assert str(err.value).count(". ") == 0 and str(err.value).endswith(".")


def test_an_explicit_policy_with_secure_aggregation_is_a_config_error():
    from fedtune.algorithms import resolve

    plain = {"secagg": "on", "fraction-evaluate": 0.0}
    for keys in ({"example-weights": "capped"}, {"max-update-norm-ratio": 2.0}):
        with pytest.raises(ConfigError, match="cannot run with secagg='on'"):
            resolve(Config.from_flat({**plain, **keys}))
    resolve(Config.from_flat(plain))  # auto: as reported, no error


def test_reply_checks_treat_float16_saturation_and_unsquarable_float32_as_overflow():
    spec = {"w": (2,)}
    assert check_arrays({"w": np.array([65000.0, 1.0], np.float16)}, spec) is None
    assert "float16 overflow" in check_arrays({"w": np.array([65504.0, 1.0], np.float16)},
                                              spec)
    assert "float16 overflow" in check_arrays({"w": np.array([-65504.0, 0], np.float16)}, spec)
    assert check_arrays({"w": np.array([1e18, 1.0], np.float32)}, spec) is None
    assert "float32 overflow" in check_arrays({"w": np.array([2e19, 1.0], np.float32)}, spec)
