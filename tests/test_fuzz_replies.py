"""Bad-input fuzzing (issue #18, item 3): client replies. A bad reply is dropped with a reason
(logged by node), never an exception; what is aggregated is finite and has the right shape.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedtune.config import Config

# ---- (c) the reply checks -----------------------------------------------------------------
K = 64  # FedKSeed's pool; Ferret's A has BLOCKS x K entries
BLOCKS = 3
LORA = {"m.layers.0.q_proj.lora_A.weight": (4, 8), "m.layers.0.q_proj.lora_B.weight": (8, 4),
        "m.embed_tokens.weight": (5, 8)}
DTYPES = ["float16", "float32", "float64", "int32", "int8", "bool", "complex64", "uint8"]
specials = st.sampled_from([math.nan, math.inf, -math.inf, 65504.0, 1e19, 1.8e19, 3.4e38, 1e-45,
                            0.0, -0.0])
counts = st.one_of(st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=True),
                   st.sampled_from([0, -1, 1, 2**62, 2**63 - 1, 1e300, 1.7e308, 0.5, 1e-300]))


def _server(algorithm: str) -> Any:
    """The algorithm's server side with only what its reply check and aggregation read (no
    model): the config, FedIT's variant and adapter spec, the seed pools."""
    from fedtune.algorithms.fedit.server import FedITServer
    from fedtune.algorithms.fedit.variants import variant
    from fedtune.algorithms.fedkseed.server import FedKSeedServer
    from fedtune.algorithms.ferret.server import FerretServer
    from fedtune.seeded import SeedPool
    from fedtune.strategies.trust import resolve_weights

    cfg = Config.from_flat({"algorithm": algorithm, "zo-seeds": K, "zo-steps": 8,
                            "ferret-seeds": K, "lora-r": 4, "min-train-nodes": 1})
    resolve_weights(cfg.strategy, deployed=False)
    if algorithm == "fedit":
        srv = FedITServer.__new__(FedITServer)
        srv.cfg, srv.variant, srv._spec, srv.merged = cfg, variant(cfg), dict(LORA), None
        srv._stash = []
        return srv
    srv = (FerretServer if algorithm == "ferret" else FedKSeedServer).__new__(
        FerretServer if algorithm == "ferret" else FedKSeedServer)
    srv.cfg, srv.pro, srv.server_lr_factor = cfg, False, 1.0  # (Ferret's: a constant lr)
    srv.pool = SeedPool(np.arange(1, (BLOCKS if algorithm == "ferret" else 1) * K + 1))
    return srv


class StubGrid:
    """The node ids a strategy's configure_train addresses."""

    def __init__(self, n: int) -> None:
        self.ids = list(range(101, 101 + n))

    def get_node_ids(self) -> list[int]:
        return list(self.ids)


@st.composite
def arrays_record(draw: st.DrawFn) -> dict[str, np.ndarray]:
    """A FedIT adapter with damage: keys missing or extra, shapes, dtypes, special values."""
    out = {}
    for key, shape in LORA.items():
        action = draw(st.sampled_from(["ok", "ok", "ok", "drop", "shape", "dtype", "value",
                                       "rank"]))
        if action == "drop":
            continue
        if action == "shape":
            shape = tuple(draw(st.lists(st.integers(0, 9), max_size=3)))
        if action == "rank":  # FedIT accepts lower ranks: one factor's rank only
            shape = (2, shape[1]) if "lora_A" in key else (shape[0], 2) if "lora_B" in key \
                else shape
        dtype = draw(st.sampled_from(DTYPES)) if action == "dtype" else "float32"
        arr = np.full(shape, 0.01).astype(dtype)
        if action == "value" and arr.size:
            arr = arr.astype(draw(st.sampled_from(["float16", "float32"])))
            with np.errstate(over="ignore"):
                arr.flat[draw(st.integers(0, arr.size - 1))] = draw(specials)
        out[key] = arr
    if draw(st.booleans()) and draw(st.booleans()):
        out["m.extra.lora_A.weight"] = np.zeros((4, 8), np.float32)
    return out


@st.composite
def pairs_bytes(draw: st.DrawFn, k: int) -> Any:
    """Packed (entry, scalar) pairs, or damage: raw bytes, out-of-range entries, NaN, text."""
    from fedtune.seeded.pool import _index_dtype

    kind = draw(st.sampled_from(["good", "good", "raw", "entries", "scalars", "text", "none"]))
    if kind == "raw":
        return draw(st.binary(max_size=40))
    if kind == "text":
        return "pairs"
    if kind == "none":
        return None
    n = draw(st.integers(0, 12))
    idx = np.asarray(draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n, unique=True)),
                     dtype=np.int64)
    vals = np.full(n, 0.5, dtype=np.float32)
    if kind == "entries" and n:
        idx[draw(st.integers(0, n - 1))] = draw(st.integers(k, 2**16 - 1))
    if kind == "scalars" and n:
        with np.errstate(over="ignore"):
            vals[draw(st.integers(0, n - 1))] = draw(specials)
    itype = _index_dtype(k)
    return (idx.astype(itype).tobytes() + vals.astype("<f4").tobytes()) if kind else None


@st.composite
def metrics_record(draw: st.DrawFn) -> dict[str, Any] | None:
    if draw(st.integers(0, 9)) == 0:
        return None
    out: dict[str, Any] = {}
    if draw(st.integers(0, 9)):
        out["num-examples"] = draw(counts)
    if draw(st.booleans()):
        out["train-loss"] = draw(st.one_of(st.floats(allow_nan=True), specials))
    if draw(st.booleans()):
        out["train-seconds"] = draw(st.one_of(st.floats(0, 1e6), st.lists(st.floats(),
                                                                           max_size=2)))
    return out


@st.composite
def reply_content(draw: st.DrawFn, algorithm: str) -> Any:
    """The content of one train reply, as Flower records."""
    from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

    from fedtune.wire.flower import to_arrayrecord

    records: dict[str, Any] = {}
    if algorithm == "fedit":
        if draw(st.integers(0, 9)):
            records["arrays"] = to_arrayrecord(draw(arrays_record()))
    else:
        pairs = draw(pairs_bytes(BLOCKS * K if algorithm == "ferret" else K))
        if pairs is not None:
            records["zo"] = ConfigRecord({"pairs": pairs})
        if draw(st.integers(0, 4)) == 0:
            records["arrays"] = ArrayRecord()
    metrics = draw(metrics_record())
    if metrics is not None:
        try:
            records["metrics"] = MetricRecord(metrics)
        except (TypeError, ValueError):  # Flower itself refuses it: it never crosses the wire
            pass
    return RecordDict(records)


def _round(algorithm: str, contents: list[Any], caplog: pytest.LogCaptureFixture) -> None:
    """One round of the loop's own reply path: collect (check, drop, log), the trust policy,
    the algorithm's receive and the strategy's aggregate; the global model stays finite."""
    from flwr.app import ConfigRecord, Message

    from fedtune.flower.hooks import aggregate, reply_check
    from fedtune.flower.loop import SampledGrid, collect
    from fedtune.flower.registry import NodeRegistry
    from fedtune.strategies import build_strategy
    from fedtune.strategies.hooks import hooks_of
    from fedtune.wire.flower import to_arrayrecord

    srv = _server(algorithm)
    payload = "arrays" if algorithm == "fedit" else "seeds"
    strategy = build_strategy(srv.cfg, payload, srv)
    grid = StubGrid(len(contents))
    glob = ({k: np.zeros(s, np.float32) for k, s in LORA.items() if "embed" not in k} | {
        "m.embed_tokens.weight": np.zeros(LORA["m.embed_tokens.weight"], np.float32)}
            if algorithm == "fedit" else
            {"accumulated": np.zeros(srv.pool.k, np.float32)})
    sent = list(strategy.configure_train(1, to_arrayrecord(glob), ConfigRecord({}),
                                         SampledGrid(grid, grid.ids)))
    replies = [Message(c, reply_to=m) for c, m in zip(contents, sent, strict=True)]
    grid.send_and_receive = lambda msgs, timeout=None: replies
    registry = NodeRegistry(grid, timeout=1.0)
    registry.names = {i: f"client-{i}" for i in grid.ids}
    caplog.clear()
    with caplog.at_level("WARNING", logger="fedtune"):
        got = collect(grid, sent, registry, 1.0, reply_check(srv, strategy))
    dropped = [r.getMessage() for r in caplog.records if "dropped reply" in r.getMessage()]
    assert len(dropped) == got.dropped == len(contents) - len(got.valid)
    assert all(": " in line.split("dropped reply from ", 1)[1] for line in dropped)
    if not got.valid:
        return
    names = [registry.name(r.metadata.src_node_id) for r in got.valid]
    hooks_of(strategy).screen(got.valid, names, glob)  # the trust policy, when the chain has it
    new, _ = aggregate(strategy, srv, 1, got.valid)
    if new is None:
        return
    assert set(new) == set(glob)
    for key, value in new.items():
        assert value.shape == glob[key].shape and np.isfinite(value).all(), key


@pytest.mark.parametrize("algorithm", ["fedit", "fedkseed", "ferret"])
@given(data=st.data())
def test_any_reply_is_aggregated_finite_or_dropped_with_a_reason(algorithm: str, data: Any,
                                                                 caplog) -> None:
    contents = data.draw(st.lists(reply_content(algorithm), min_size=1, max_size=4))
    _round(algorithm, contents, caplog)


def test_a_list_metric_is_a_dropped_reply_not_a_crash_of_the_averaging():
    """Found by the fuzzer in CI: one reply's ``train-seconds`` as a list and another's as a
    float made Flower's metric averaging raise TypeError inside the round."""
    from flwr.app import MetricRecord, RecordDict

    from fedtune.wire import check_metrics
    from fedtune.wire.flower import to_records

    ok = RecordDict({"metrics": MetricRecord({"num-examples": 1, "train-seconds": 0.0})})
    bad = RecordDict({"metrics": MetricRecord({"num-examples": 1, "train-seconds": [1.0]})})
    assert check_metrics(to_records(ok)) is None
    assert check_metrics(to_records(bad)) == "metric 'train-seconds' is list, not a number"
