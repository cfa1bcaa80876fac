"""LoRA aggregation variants (``lora-aggregation``): FLoRA's and FedEx-LoRA's exact aggregate,
FedIT's cross-term error on the same inputs, FFA-LoRA's frozen A, and real rounds of every
variant (learning, measured bytes against the arrays sent, mixed ranks, config errors)."""

import json

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

from client_app.app import app as client_app
from fedtune.algorithms import resolve
from fedtune.algorithms.fedit.adapter import adapter_state
from fedtune.algorithms.fedit.client import FedITClient
from fedtune.algorithms.fedit.factors import OTHER, A, B, key, layers, part, select
from fedtune.algorithms.fedit.merged import MergedBase, apply_update
from fedtune.algorithms.fedit.model import initial_adapter, lora_layers, peft_model_for, set_base
from fedtune.algorithms.fedit.server import FedITServer
from fedtune.errors import ConfigError
from fedtune.flower.hooks import aggregate
from fedtune.flower.server import run_server
from fedtune.node import Node
from fedtune.strategies import build_strategy
from fedtune.wire import Records
from fedtune.wire.flower import payload_bytes, to_arrayrecord
from tests.conftest import small_config
from tests.inprocess_grid import InProcessGrid

COUNTS = (10, 30, 60)  # examples per client: p = 0.1, 0.3, 0.6


def _setup(aggregation, **keys):
    cfg = small_config(**{"lora-aggregation": aggregation, **keys})
    server = FedITServer(cfg)
    return cfg, server, build_strategy(cfg, "arrays", server)


def _random_adapters(cfg, ranks, seed):
    """Random client adapters (A, B of each client's rank; random modules_to_save)."""
    rng = np.random.default_rng(seed)
    full = initial_adapter(cfg)
    out = []
    for r in ranks:
        adapter = {}
        for k, v in full.items():
            p = part(k)
            shape = (r, v.shape[1]) if p == A else (v.shape[0], r) if p == B else v.shape
            adapter[k] = (0.1 * rng.standard_normal(shape)).astype(np.float32)
        out.append(adapter)
    return out


def _replies(server, adapters):
    """Flower reply messages of the uploaded parts, as the loop hands them to aggregation."""
    msgs = []
    for i, (adapter, n) in enumerate(zip(adapters, COUNTS, strict=True)):
        sent = Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=7 + i,
                       message_type="train")
        content = RecordDict({
            "arrays": to_arrayrecord(select(adapter, server.variant.uploads)),
            "metrics": MetricRecord({"num-examples": n, "train-loss": 1.0})})
        msgs.append(Message(content, reply_to=sent))
    return msgs


def _clients_mean(cfg, adapters, name):
    """sum_i p_i s B_i A_i in float64: the average of the clients' updates of one layer."""
    p = np.array(COUNTS, np.float64) / sum(COUNTS)
    return sum(w * cfg.lora.scale * (ad[key(name, B)].astype(np.float64)
                                     @ ad[key(name, A)].astype(np.float64))
               for w, ad in zip(p, adapters, strict=True))


def _effective_change(cfg, server, before, arrays, name):
    """(W0 + Delta + s B A) after aggregation minus the base the clients trained on."""
    full = server.full_adapter(arrays)
    delta = server.merged.delta[name] if server.merged is not None else 0.0
    return (delta - before + cfg.lora.scale * full[key(name, B)].astype(np.float64)
            @ full[key(name, A)].astype(np.float64))


def _round(cfg, server, strategy, rnd, ranks, seed):
    """One aggregation of random client adapters; returns (adapters, change per layer)."""
    names = layers(initial_adapter(cfg))
    before = {n: (server.merged.delta[n].copy() if server.merged is not None else 0.0)
              for n in names}
    adapters = _random_adapters(cfg, ranks, seed)
    arrays, _ = aggregate(strategy, server, rnd, _replies(server, adapters))
    return adapters, arrays, {n: _effective_change(cfg, server, before[n], arrays, n)
                              for n in names}


def _relative_error(change, target):
    return float(np.linalg.norm(change - target) / np.linalg.norm(target))


@pytest.mark.parametrize("aggregation,ranks", [("flora", (4, 8, 16)), ("fedex", (16, 16, 16))])
def test_flora_and_fedex_aggregate_exactly_where_fedit_has_cross_terms(aggregation, ranks):
    cfg, server, strategy = _setup(aggregation, **{"lora-ranks": "4,8,16"} if aggregation ==
                                   "flora" else {})
    names = layers(initial_adapter(cfg))
    for rnd, seed in ((1, 0), (2, 1)):  # round 2 starts from a merged base
        adapters, arrays, change = _round(cfg, server, strategy, rnd, ranks, seed)
        for name in names:
            target = _clients_mean(cfg, adapters, name)
            assert _relative_error(change[name], target) < 1e-5, (rnd, name)
    if aggregation == "flora":  # the adapter restarts: its B is zero again
        assert all(not server.full_adapter(arrays)[key(n, B)].any() for n in names)

    # FedIT on the same inputs (equal ranks: FedAvg of A and B) misses the cross terms
    cfg, server, strategy = _setup("fedit")
    adapters, _, change = _round(cfg, server, strategy, 1, (16, 16, 16), 1)
    errors = [_relative_error(change[n], _clients_mean(cfg, adapters, n)) for n in names]
    assert min(errors) > 0.1


def test_the_merged_base_reaches_the_model_weights():
    """The torch side: W0 + Delta written into the base layers equals W0 + the merged changes,
    and set_base(None) restores W0 exactly."""
    cfg, server, strategy = _setup("flora")
    model, _ = peft_model_for(cfg)
    set_base(cfg, None)
    modules = lora_layers(model)
    w0 = {n: m.get_base_layer().weight.detach().clone() for n, m in modules.items()}
    adapters, _, _ = _round(cfg, server, strategy, 1, (16, 16, 16), 3)
    set_base(cfg, server.merged.delta)
    for name, module in modules.items():
        want = w0[name].double() + torch.from_numpy(_clients_mean(cfg, adapters, name))
        got = module.get_base_layer().weight.double()
        assert torch.allclose(got, want, rtol=0, atol=1e-6)
    set_base(cfg, None)
    assert all(torch.equal(m.get_base_layer().weight, w0[n]) for n, m in modules.items())


def test_ffa_never_changes_a_and_clients_upload_only_b():
    cfg, server, _ = _setup("ffa")
    init = initial_adapter(cfg)
    assert not select(server.initial_arrays(), (A,))  # A never goes down
    client = FedITClient(cfg)
    content = Records(arrays={"arrays": {k: v.astype(np.float16)
                                         for k, v in server.initial_arrays().items()}},
                      configs={"config": {"lr": 5e-3, "server-round": 1}})
    for pid in (0, 1):
        reply = client.train(content, Node(f"client-{pid:04d}", pid, 2), {})
        assert {part(k) for k in reply.arrays["arrays"]} == {B, OTHER}
        model, _ = peft_model_for(cfg)
        trained = adapter_state(model)  # every client's A after its round: the initial A
        assert all(np.array_equal(trained[k], init[k]) for k in select(init, (A,)))
        assert any(not np.array_equal(trained[k], init[k]) for k in select(init, (B,)))
    full = server.full_adapter(server.initial_arrays())
    assert all(np.array_equal(full[k], init[k]) for k in select(init, (A,)))


def test_a_node_catches_up_with_the_merged_base_bit_for_bit():
    """Factors of the missed rounds, or the whole Delta when that is smaller, or a node out of
    step (refused); a node that replied is at the round it was sent."""
    rng = np.random.default_rng(0)
    base = MergedBase({"l": (64, 32)})
    mine, at = {}, 0
    for rnd in (1, 2, 3):
        base.add(rnd, {"l": (rng.standard_normal((64, 4)).astype(np.float32),
                             rng.standard_normal((4, 32)).astype(np.float32))})
    update = base.update_for("a")  # never contacted: factors of rounds 1..3 (< dense)
    assert not update.configs["lora-base-version"]["whole"]
    mine, at = apply_update(mine, at, update)
    assert at == 3 and mine["l"].tobytes() == base.delta["l"].tobytes()
    base.delivered("a", True, 3)
    assert not base.update_for("a").arrays["lora-base"]  # up to date: nothing to send
    for rnd in range(4, 12):  # past the dense size the old factors are forgotten
        base.add(rnd, {"l": (rng.standard_normal((64, 4)).astype(np.float32),
                             rng.standard_normal((4, 32)).astype(np.float32))})
    late = base.update_for("a")
    assert late.configs["lora-base-version"]["whole"]
    assert sum(v.nbytes for v in late.arrays["lora-base"].values()) == base.dense_bytes
    mine, at = apply_update(mine, at, late)
    assert mine["l"].tobytes() == base.delta["l"].tobytes()
    base.delivered("b", False, 11)  # failed: unknown, gets the whole Delta
    assert base.update_for("b").configs["lora-base-version"]["whole"]
    with pytest.raises(RuntimeError, match="at round 1, but the update starts at round 9"):
        apply_update({}, 1, Records(arrays={"lora-base": {}}, configs={
            "lora-base-version": {"from": 9, "to": 11, "whole": False}}))


def _run(tmp_path, aggregation, rounds=3, **keys):
    cfg = small_config(**{"lora-aggregation": aggregation, "num-server-rounds": rounds,
                          "fraction-train": 1.0, "fraction-evaluate": 1.0,
                          "min-available-nodes": 3, "run-dir": str(tmp_path / aggregation),
                          **keys})
    run_dir = run_server(InProcessGrid(client_app, 3, cfg.to_flat()), cfg)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return cfg, run_dir, rows


def _sent_bytes(arrays, dtype=np.float16):
    """Payload bytes of ``arrays`` as a record carries them (each buffer with its header)."""
    return payload_bytes(RecordDict({"a": to_arrayrecord(arrays, dtype)}))


def _stacked_factors(shapes, ranks):
    """Zero factors of the shapes one round of ``ranks`` clients merges (layer: Bs, As)."""
    out = {}
    for name, (o, i) in shapes.items():
        out[f"1/{name}/B"] = np.zeros((o, sum(ranks)), np.float32)
        out[f"1/{name}/A"] = np.zeros((sum(ranks), i), np.float32)
    return out


@pytest.mark.parametrize("aggregation,ranks", [
    ("fedit", ""), ("ffa", ""), ("fedsa", ""), ("flora", ""), ("fedex", ""),
    ("fedit", "4,8,16"), ("flora", "4,8,16")])
def test_every_variant_learns_and_sends_what_it_says(tmp_path, aggregation, ranks, one_thread):
    cfg, run_dir, rows = _run(tmp_path, aggregation, **{"lora-ranks": ranks})
    assert all(r.get("dropped", 0) == 0 and r.get("clients", 3) == 3 for r in rows[1:])
    assert rows[-1]["eval_loss"] < 0.8 * rows[0]["eval_loss"]
    if aggregation == "fedsa":  # the clients' personalised models (their own B) learn too
        assert rows[-1]["fed_eval_loss"] < 0.8 * rows[0]["eval_loss"]

    variant = FedITServer(cfg).variant
    full = initial_adapter(cfg)
    shared = select(full, variant.shares)
    client_ranks = [cfg.lora.rank_for(p) for p in range(3)]
    up = np.mean([_sent_bytes(select(initial_adapter(cfg, r), variant.uploads))
                  for r in client_ranks])
    # every node trains every round: round t brings it round t-1's stacked factors (float32);
    # FedEx-LoRA's carry r more for the 16-bit rounding of the adapter sent (test_fedex_exact)
    merged_ranks = client_ranks + ([cfg.lora.lora_r] if aggregation == "fedex" else [])
    factors = _sent_bytes(_stacked_factors(FedITServer(cfg).merged.shapes, merged_ranks),
                          None) if variant.merges else 0
    assert rows[1]["payload_down_per_client"] == _sent_bytes(shared)
    for row in rows[2:]:
        assert row["payload_down_per_client"] == _sent_bytes(shared) + factors
    for row in rows[1:]:
        assert row["payload_up_per_client"] == up
    saved = "model" if variant.merges else "adapter"
    assert json.loads((run_dir / "summary.json").read_text())["result"].endswith(saved)


def test_config_errors_name_the_fix():
    def error(**keys):
        with pytest.raises(ConfigError) as err:
            resolve(small_config(**keys))
        return str(err.value)

    assert "needs one rank" in error(**{"lora-aggregation": "ffa", "lora-ranks": "4,16"})
    assert "raise lora-r" in error(**{"lora-ranks": "4,32"})
    assert "use one of fedavg, fedprox" in error(**{"lora-aggregation": "flora",
                                                     "strategy": "fedadam"})
    assert "scaffold" in error(**{"lora-aggregation": "fedsa", "strategy": "scaffold"})
    assert "each client's own factors" in error(**{"lora-aggregation": "fedex", "dp": "server",
                                                    "fraction-evaluate": 0.0})
    assert "not a comma list" in error(**{"lora-ranks": "4,x"})
    assert "is unknown" in error(**{"lora-aggregation": "hetlora"})
    resolve(small_config(**{"lora-aggregation": "fedsa", "secagg": "on", "min-train-nodes": 2,
                            "fraction-evaluate": 0.0}))  # linear in A: secure aggregation fits


@pytest.mark.parametrize("aggregation", ["flora", "fedsa"])
def test_dpo_rounds_run_with_the_unmerged_reference(tmp_path, aggregation, one_thread):
    """DPO's reference is the model the run started from: round 0 (policy = reference) has
    the DPO loss log 2 exactly, and later rounds run on the merged base / personal B."""
    _, _, rows = _run(tmp_path, aggregation, rounds=2, objective="dpo")
    assert rows[0]["eval_loss"] == pytest.approx(np.log(2), abs=1e-6)
    assert all(r["dropped"] == 0 and r["clients"] == 3 and r["fed_eval_loss"] is not None
               for r in rows[1:])
