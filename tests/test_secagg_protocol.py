"""SecAgg+ as a pure library: primitives, ring arithmetic, and whole protocol runs with dropouts,
malformed replies and a curious server (which must never be able to unmask one client)."""

from __future__ import annotations

import ast
import itertools
import os
import time
from dataclasses import dataclass, field

import numpy as np
import pytest

from fedtune.secagg.crypto import (
    SecAggError,
    agree,
    combine_secret,
    decrypt,
    encrypt,
    keypair,
    share_secret,
)
from fedtune.secagg.masking import add, dequantize, max_clients, prg, quantize, sub
from fedtune.secagg.protocol import (
    SecAggServer,
    client_mask,
    client_setup,
    client_share,
    client_unmask,
    neighbours,
)
from tests.conftest import ROOT

#: chi-square critical value, 255 degrees of freedom, p = 1e-6 (scipy.stats.chi2.ppf)
CHI2_255_P1E6 = 377.08


@dataclass
class Round:
    """What one simulated round leaves behind."""

    server: SecAggServer
    vectors: dict[int, np.ndarray]
    masked: dict[int, np.ndarray] = field(default_factory=dict)
    unmask_replies: dict[int, dict] = field(default_factory=dict)
    refused: dict[int, str] = field(default_factory=dict)  # clients that refused to unmask
    total: np.ndarray | None = None
    error: SecAggError | None = None


def _vectors(m: int, n: int, seed: int = 0) -> dict[int, np.ndarray]:
    gen = np.random.default_rng(seed)
    return {i: gen.integers(0, 2**16, n, dtype=np.uint32) for i in range(1, m + 1)}


def _keys_and_shares(server: SecAggServer, graph, t: int, context: bytes, persist=dict):
    """Every client through setup and share: their states and the shares they send."""
    states, keys, shares = {}, {}, {}
    for i in graph:
        states[i], keys[i] = client_setup(i, t, graph[i], context)
    for i, peer_keys in server.receive_keys(keys).items():
        states[i], shares[i] = client_share(persist(states[i]), peer_keys)
    return states, shares


def _run(m: int, k: int, t: int, n: int = 500, *, vectors=None, silent_at_mask=(), short=(),
         corrupt_unmask=None, seed: int = 0, persist=dict) -> Round:  # fmt: skip
    """One round of m clients; ``persist`` stands for storing a client's state between messages
    (deployed, each message runs in a new process)."""
    context = f"test|{seed}|round-1".encode()
    graph = neighbours(m, k, seed)
    rnd = Round(SecAggServer(list(graph), t, graph, context), vectors or _vectors(m, n, seed))
    states, shares = _keys_and_shares(rnd.server, graph, t, context, persist)
    for i, cts in rnd.server.route_shares(shares).items():
        if i not in silent_at_mask:
            states[i], rnd.masked[i] = client_mask(persist(states[i]), cts, rnd.vectors[i])
    sent = {i: (y[:-1] if i in short else y) for i, y in rnd.masked.items()}
    rnd.server.receive_masked(sent, n)
    for i, (alive, gone) in rnd.server.unmask_requests().items():
        try:
            rnd.unmask_replies[i] = client_unmask(persist(states[i]), alive, gone)
        except SecAggError as err:
            rnd.refused[i] = str(err)
    if corrupt_unmask:
        corrupt_unmask(rnd.unmask_replies)
    try:
        rnd.total = rnd.server.finish(rnd.unmask_replies)
    except SecAggError as err:
        rnd.error = err
    return rnd


def _plain_sum(rnd: Round) -> np.ndarray:
    total = np.zeros_like(next(iter(rnd.vectors.values())))
    for i in rnd.server.survivors:
        total = add(total, rnd.vectors[i])
    return total


# ---- crypto --------------------------------------------------------------------------------


def test_key_agreement_is_symmetric_and_bound_to_the_context():
    (sk_a, pk_a), (sk_b, pk_b) = keypair(), keypair()
    assert len(sk_a) == len(pk_a) == 32
    key = agree(sk_a, pk_b, b"round-1")
    assert len(key) == 32 and key == agree(sk_b, pk_a, b"round-1")
    assert key != agree(sk_a, pk_b, b"round-2")
    with pytest.raises(SecAggError):
        agree(sk_a, pk_b[:31], b"round-1")
    with pytest.raises(SecAggError):
        agree(sk_a, bytes(32), b"round-1")  # a small-order point: the shared secret is zero


def test_encryption_round_trips_and_rejects_tampering():
    key, other = os.urandom(32), bytes(32)
    ct = encrypt(key, b"a share", b"aad")
    assert decrypt(key, ct, b"aad") == b"a share"
    assert encrypt(key, b"a share", b"aad") != ct  # fresh nonce
    tampered = ct[:-1] + bytes([ct[-1] ^ 1])
    for bad in [
        lambda: decrypt(key, tampered, b"aad"),
        lambda: decrypt(key, ct, b"other"),
        lambda: decrypt(other, ct, b"aad"),
        lambda: decrypt(key, ct[:20], b"aad"),
    ]:
        with pytest.raises(SecAggError):
            bad()


def test_shamir_any_t_shares_reconstruct_and_t_minus_1_do_not():
    secret = bytes(range(32))
    points = [2, 5, 7, 11, 65535]
    shares = share_secret(secret, 3, points)
    assert sorted(shares) == points
    for subset in itertools.combinations(points, 3):
        assert combine_secret({p: shares[p] for p in subset}, 3) == secret
    assert combine_secret(shares, 3) == secret  # more than t: exactly t are used
    two = {p: shares[p] for p in points[:2]}
    with pytest.raises(SecAggError):
        combine_secret(two, 3)
    try:  # interpolating t-1 points as if they were enough gives some other value
        assert combine_secret(two, 2) != secret
    except SecAggError:
        pass


def test_shamir_rejects_bad_points_and_malformed_shares():
    for points in ([1, 1, 2], [0, 1, 2], [1, 2, 65536]):
        with pytest.raises(SecAggError):
            share_secret(bytes(32), 2, points)
    with pytest.raises(SecAggError):
        share_secret(bytes(32), 4, [1, 2, 3])
    shares = share_secret(bytes(32), 2, [1, 2, 3])
    for bad in (
        {1: shares[1], 2: shares[2][:-1]},
        {1: shares[1], 3: shares[2]},
        {1: shares[1], 2: b"x" * len(shares[2])},
    ):
        with pytest.raises(SecAggError):
            combine_secret(bad, 2)


# ---- masking -------------------------------------------------------------------------------


def test_prg_is_a_deterministic_uint32_stream():
    seed = bytes(range(32))
    a = prg(seed, 1000)
    assert a.dtype == np.uint32 and a.shape == (1000,)
    assert np.array_equal(a, prg(seed, 1000)) and np.array_equal(a[:10], prg(seed, 10))
    assert not np.array_equal(a, prg(bytes(32), 1000))
    assert prg(seed, 0).shape == (0,)
    with pytest.raises(SecAggError):
        prg(seed[:16], 10)


def test_ring_arithmetic_wraps_and_refuses_floats():
    top = np.array([2**32 - 1, 5], dtype=np.uint32)
    one = np.array([1, 7], dtype=np.uint32)
    assert add(top, one).tolist() == [0, 12]
    assert sub(one, top).tolist() == [2, 2]
    assert add(top, one).dtype == sub(one, top).dtype == np.uint32
    with pytest.raises(SecAggError):
        add(top, one.astype(np.float64))
    with pytest.raises(SecAggError):
        sub(top, one[:1])


def test_quantised_sum_dequantises_within_count_steps():
    R, bits, count = 1.5, 16, 20
    gen = np.random.default_rng(0)
    floats = [gen.normal(0, 1, 1000) for _ in range(count)]
    total = np.zeros(1000, dtype=np.uint32)
    for x in floats:
        q = quantize(x, R, bits, gen)
        assert q.dtype == np.uint32 and q.max() <= 2**bits - 1
        total = add(total, q)
    want = np.sum([np.clip(x, -R, R) for x in floats], axis=0)
    step = 2 * R / (2**bits - 1)
    assert np.abs(dequantize(total, count, R, bits) - want).max() <= count * step
    assert max_clients(bits) == (2**32 - 1) // (2**bits - 1)
    with pytest.raises(SecAggError):
        dequantize(total, max_clients(bits) + 1, R, bits)


def test_stochastic_rounding_is_unbiased():
    R, bits, draws = 1.0, 4, 200_000
    step = 2 * R / (2**bits - 1)
    gen = np.random.default_rng(1)
    x = gen.uniform(-R, R, draws)
    err = dequantize(quantize(x, R, bits, gen), 1, R, bits) - x
    assert np.abs(err).max() < step
    # each error is a two-point variable with std <= step/2: 5 standard errors of the mean
    assert abs(err.mean()) < 5 * (step / 2) / np.sqrt(draws)


# ---- graph ---------------------------------------------------------------------------------


def test_neighbourhood_graph_is_symmetric_regular_and_seeded():
    g = neighbours(20, 6, seed=3)
    assert all(len(near) == 6 and near == sorted(near) for near in g.values())
    assert all(i in g[j] and i not in g[i] for i in g for j in g[i])
    assert g == neighbours(20, 6, seed=3) and g != neighbours(20, 6, seed=4)
    assert neighbours(5, 4, 0) == {i: [j for j in range(1, 6) if j != i] for i in range(1, 6)}
    with pytest.raises(SecAggError):
        neighbours(20, 5, 0)


# ---- whole rounds --------------------------------------------------------------------------


@pytest.mark.parametrize("m,k,t", [(5, 4, 3), (8, 4, 3), (4, 3, 2), (4, 3, 3)])
def test_round_unmasks_exactly_the_sum_and_masked_vectors_look_uniform(m, k, t):
    rnd = _run(m, k, t, n=2000)
    assert rnd.error is None and rnd.server.survivors == list(range(1, m + 1))
    assert np.array_equal(rnd.total, _plain_sum(rnd)) and rnd.total.dtype == np.uint32
    top = []
    for i, y in rnd.masked.items():
        assert np.count_nonzero(y == rnd.vectors[i]) < 10  # every masked vector differs
        top.append(y >> 24)  # the plaintexts are < 2^16: their top byte is always 0
    counts = np.bincount(np.concatenate(top), minlength=256)
    expected = counts.sum() / 256
    assert ((counts - expected) ** 2 / expected).sum() < CHI2_255_P1E6
    for reply in rnd.unmask_replies.values():  # nobody revealed both shares of one node
        assert not set(reply["b"]) & set(reply["sk"])


def test_client_state_survives_a_flower_config_record():
    from flwr.app import ConfigRecord

    rnd = _run(5, 4, 3, silent_at_mask={2}, persist=lambda state: dict(ConfigRecord(state)))
    assert rnd.error is None and np.array_equal(rnd.total, _plain_sum(rnd))


def test_secagg_imports_no_flower_and_no_other_fedtune_module():
    allowed = {"fedtune.errors", "fedtune.seeding"}
    for path in (ROOT / "fedtune" / "secagg").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] != "flwr", f"{path.name} imports {name}"
                if name.startswith("fedtune") and not name.startswith("fedtune.secagg"):
                    assert name in allowed, f"{path.name} imports {name}"


def test_secagg_plus_graph_is_sparse():
    g = neighbours(8, 4, 0)
    assert any(j not in g[i] for i in g for j in g if i != j)


def test_one_dropout_after_the_share_stage_leaves_the_exact_sum_of_the_others():
    rnd = _run(5, 4, 3, silent_at_mask={3})
    assert rnd.server.survivors == [1, 2, 4, 5]
    assert "no reply at the mask stage" in rnd.server.dropped[3]
    assert any(reply["sk"] for reply in rnd.unmask_replies.values())
    assert np.array_equal(rnd.total, _plain_sum(rnd))


def test_two_of_five_dropping_leaves_exactly_threshold_survivors_and_still_unmasks():
    rnd = _run(5, 4, 3, silent_at_mask={2, 4})
    assert rnd.error is None and rnd.server.survivors == [1, 3, 5]
    assert np.array_equal(rnd.total, _plain_sum(rnd))


def test_secagg_plus_dropout_is_unmasked_too():
    rnd = _run(8, 4, 3, silent_at_mask={5})
    assert rnd.error is None and 5 not in rnd.server.survivors
    assert np.array_equal(rnd.total, _plain_sum(rnd))


def test_fewer_than_threshold_survivors_fails_the_round():
    rnd = _run(5, 4, 3, silent_at_mask={1, 2, 3})
    assert rnd.server.survivors == [4, 5]
    assert set(rnd.refused) == {4, 5}  # the clients refuse to reveal anything
    assert isinstance(rnd.error, SecAggError) and "fewer than threshold 3" in str(rnd.error)


def test_a_wrong_length_vector_is_dropped_and_the_rest_sum_exactly():
    rnd = _run(5, 4, 3, short={2})
    assert "length 500" in rnd.server.dropped[2] and rnd.server.survivors == [1, 3, 4, 5]
    assert np.array_equal(rnd.total, _plain_sum(rnd))


def test_a_malformed_unmask_reply_is_ignored_when_enough_shares_remain():
    def corrupt(replies):
        replies[2] = {"b": {1: b"junk"}, "sk": {}}
        replies[4] = "not a dict"

    rnd = _run(5, 4, 3, corrupt_unmask=corrupt)
    assert set(rnd.server.ignored) == {2, 4} and rnd.error is None
    assert np.array_equal(rnd.total, _plain_sum(rnd))


def test_a_wrong_but_well_formed_share_is_skipped():
    def corrupt(replies):
        share = replies[2]["b"][1]
        replies[2]["b"][1] = share[:-1] + bytes([share[-1] ^ 1])

    rnd = _run(5, 4, 3, corrupt_unmask=corrupt)
    assert rnd.error is None and np.array_equal(rnd.total, _plain_sum(rnd))


def test_too_few_valid_shares_fail_the_round():
    def corrupt(replies):
        for i in (1, 2, 3):
            replies[i] = {}

    rnd = _run(5, 4, 3, corrupt_unmask=corrupt)
    assert isinstance(rnd.error, SecAggError) and "cannot be rebuilt" in str(rnd.error)


def test_quantised_floats_survive_a_round_with_a_dropout():
    R, bits, m, n = 2.0, 16, 8, 300
    gen = np.random.default_rng(5)
    floats = {i: gen.normal(0, 1, n) for i in range(1, m + 1)}
    quantised = {i: quantize(x, R, bits, gen) for i, x in floats.items()}
    rnd = _run(m, 4, 3, n, vectors=quantised, silent_at_mask={6})
    count = len(rnd.server.survivors)
    assert count == 7 and rnd.error is None
    got = dequantize(rnd.total, count, R, bits)
    want = np.sum([np.clip(floats[i], -R, R) for i in rnd.server.survivors], axis=0)
    assert np.abs(got - want).max() <= count * 2 * R / (2**bits - 1)


# ---- what clients refuse -------------------------------------------------------------------


def _masked_client(m: int = 5, k: int = 4, t: int = 3):
    """States of every client after the mask stage, and the server."""
    context = b"refusals"
    graph = neighbours(m, k, 0)
    server = SecAggServer(list(graph), t, graph, context)
    states, shares = _keys_and_shares(server, graph, t, context)
    for i, cts in server.route_shares(shares).items():
        states[i], _ = client_mask(states[i], cts, np.zeros(4, dtype=np.uint32))
    return states, server


def test_client_never_reveals_both_shares_of_one_node():
    states, _ = _masked_client()
    with pytest.raises(SecAggError, match="both shares"):
        client_unmask(dict(states[1]), [2, 3, 4], [2])
    with pytest.raises(SecAggError, match="own mask key"):
        client_unmask(dict(states[1]), [2, 3, 4], [1])
    with pytest.raises(SecAggError, match="no shares"):
        client_unmask(dict(states[1]), [2, 3, 4, 9], [])
    state = dict(states[1])
    client_unmask(state, [2, 3, 4], [5])
    with pytest.raises(SecAggError):  # a second request, e.g. now claiming 2 dropped
        client_unmask(state, [3, 4, 5], [2])


def test_client_state_is_flat_config_record_values():
    states, _ = _masked_client()
    for state in states.values():
        for value in state.values():
            items = value if isinstance(value, list) else [value]
            assert all(type(v) in (bytes, int, str) for v in items)
            assert len({type(v) for v in items}) <= 1
        assert "b" not in state and "sk_s" not in state  # forgotten once masked


def test_client_share_rejects_strangers_and_too_few_neighbours():
    context = b"share"
    state, _ = client_setup(1, 3, [2, 3, 4], context)
    pk = {j: (keypair()[1], keypair()[1]) for j in (2, 3, 5)}
    with pytest.raises(SecAggError, match="not its neighbour"):
        client_share(state, pk)
    with pytest.raises(SecAggError, match="too few"):
        client_share(state, {2: pk[2]})
    with pytest.raises(SecAggError, match="repeated"):
        client_share(state, {2: pk[2], 3: pk[2]})


def test_a_tampered_or_replayed_share_is_refused_before_masking():
    graph = neighbours(3, 2, 0)
    server = SecAggServer(list(graph), 2, graph, b"round-a")
    states, shares = _keys_and_shares(server, graph, 2, b"round-a")
    routed = server.route_shares(shares)
    cts = dict(routed[1])
    j = next(iter(cts))
    cts[j] = cts[j][:-1] + bytes([cts[j][-1] ^ 1])
    with pytest.raises(SecAggError, match="authentication"):
        client_mask(states[1], cts, np.zeros(3, dtype=np.uint32))
    replay = dict(states[1], context=b"round-b")  # the same ciphertexts in another round
    with pytest.raises(SecAggError):
        client_mask(replay, routed[1], np.zeros(3, dtype=np.uint32))


# ---- what the server refuses or drops ------------------------------------------------------


def test_server_requires_threshold_above_half_the_neighbourhood():
    g = neighbours(8, 4, 0)
    with pytest.raises(SecAggError, match="half"):
        SecAggServer(list(g), 2, g, b"c")
    SecAggServer(list(g), 3, g, b"c")
    with pytest.raises(SecAggError, match="holders"):
        SecAggServer(list(g), 6, g, b"c")
    asymmetric = {**g, 1: [2]}
    with pytest.raises(SecAggError, match="symmetric"):
        SecAggServer(list(g), 3, asymmetric, b"c")


def test_server_drops_bad_keys_and_strays():
    graph = neighbours(5, 4, 0)
    server = SecAggServer(list(graph), 3, graph, b"c")
    keys = {i: client_setup(i, 3, graph[i], b"c")[1] for i in graph}
    keys[2] = {"pk_c": b"short", "pk_s": keys[2]["pk_s"]}
    keys[3] = dict(keys[4])  # a replay of another node's keys
    assert server.receive_keys(keys) == {}  # 1 and 5 alone cannot hold t = 3 shares
    assert "malformed" in server.dropped[2] and "replay" in server.dropped[3]
    assert "replay" in server.dropped[4] and "too few" in server.dropped[1]


def test_server_drops_a_node_sending_shares_to_strangers():
    graph = neighbours(8, 4, 0)
    server = SecAggServer(list(graph), 3, graph, b"c")
    states, shares = _keys_and_shares(server, graph, 3, b"c")
    stranger = next(j for j in graph if j != 1 and j not in graph[1])
    shares[1] = {**shares[1], stranger: b"x" * 60}
    routed = server.route_shares(shares)
    assert 1 not in routed and "other nodes" in server.dropped[1]
    assert all(1 not in cts for cts in routed.values())


# ---- performance (printed, not asserted) ---------------------------------------------------


def test_performance_sanity(capsys):
    start = time.perf_counter()
    prg(bytes(32), 10**6)
    prg_s = time.perf_counter() - start
    start = time.perf_counter()
    rnd = _run(8, 4, 3, n=300_000)
    run_s = time.perf_counter() - start
    assert np.array_equal(rnd.total, _plain_sum(rnd))
    with capsys.disabled():
        print(f"\nprg(10^6): {prg_s * 1e3:.1f} ms; m=8, k=4 round on 300,000 values: {run_s:.2f} s")


def test_the_context_binds_flowers_run_id_and_a_node_checks_it():
    from fedtune.secagg.context import check_context, context_for

    ctx = context_for(7, 3)
    assert ctx == b"fedtune-secagg|run=7|round=3"
    check_context(ctx, 7)
    for other in (context_for(70, 3), context_for(8, 3), b"fedtune-secagg|0|3", "run=7"):
        with pytest.raises(SecAggError, match="does not name this node's run 7"):
            check_context(other, 7)
