"""FedEx-LoRA is exact from the clients' side (issue #30 item 2): what a node rebuilds from
the messages it receives (the averaged adapter in 16 bits, the merged base's factors in float32)
is the server's model bit for bit, and that model is the average of the clients' models to
float32 rounding. Sending the 16-bit average against a residual taken from the float32 average
(the old behaviour) misses it by the wire's rounding, which these checks detect."""

import copy

import numpy as np
import torch
from flwr.app import ConfigRecord, Message, RecordDict
from transformers import AutoModelForCausalLM

import fedtune.algorithms.fedit.client as fedit_client
from fedtune.algorithms.fedit.adapter import WIRE_DTYPE, load_adapter_state
from fedtune.algorithms.fedit.client import FedITClient
from fedtune.algorithms.fedit.factors import A, B, key, layers, stacked
from fedtune.algorithms.fedit.model import initial_adapter, peft_model_for, set_base
from fedtune.flower.hooks import aggregate
from fedtune.wire.flower import from_arrayrecord, to_arrayrecord, to_recorddict, to_records
from tests.test_lora_aggregation import (
    COUNTS,
    _clients_mean,
    _random_adapters,
    _replies,
    _run,
    _setup,
)


def _received(server, arrays, node):
    """The train message a node gets, through Flower's records: the arrays in 16 bits (as the
    round loop casts them) and the merged base's update for ``node``."""
    content = RecordDict({"arrays": to_arrayrecord(arrays, WIRE_DTYPE),
                          "config": ConfigRecord({"lr": 1e-3, "server-round": 1})})
    for name, record in to_recorddict(server.down_records(node)).items():
        content[name] = record
    msg = Message(content, dst_node_id=7, message_type="train")
    return to_records(msg.content), from_arrayrecord(msg.content["arrays"])


def _relative(x, y):
    return float(np.linalg.norm(x - y) / np.linalg.norm(y))


def test_a_client_rebuilds_the_servers_model_and_the_exact_average():
    cfg, server, strategy = _setup("fedex")
    names = layers(initial_adapter(cfg))
    client, state, s = FedITClient(cfg), {}, cfg.lora.scale
    errors, old_errors, arrays = [], [], server.initial_arrays()
    for rnd in (1, 2):  # round 2 starts from a merged base
        content, _ = _received(server, arrays, "n")
        before = client.base(content, state)  # the base the clients trained on
        server.delivered("n", True)
        adapters = _random_adapters(cfg, (16, 16, 16), rnd)
        arrays, _ = aggregate(strategy, server, rnd, _replies(server, adapters))
        content, received = _received(server, arrays, "n")
        delta = client.base(content, dict(state))
        mine = client.start(received, None, state)
        # bit for bit: the node's base and adapter are the server's
        assert all(delta[n].tobytes() == server.merged.delta[n].tobytes() for n in names)
        assert all(mine[k].tobytes() == v.tobytes() for k, v in arrays.items())
        uploads = adapters  # what the server got (_replies: float32)
        weights = [n / sum(COUNTS) for n in COUNTS]
        old = stacked(uploads, weights, s, {k: v.astype(np.float64) for k, v in
                                            _float32_mean(uploads, weights).items()})
        for n in names:
            model = (delta[n].astype(np.float64) - before.get(n, 0.0)
                     + s * mine[key(n, B)].astype(np.float64) @ mine[key(n, A)])
            target = _clients_mean(cfg, uploads, n)  # sum_i p_i s B_i A_i, float64
            errors.append(_relative(model, target))
            # the old way: the float32 mean's residual, the mean's factors in 16 bits
            bs, as_ = old[n]
            old_model = (bs.astype(np.float64) @ as_ + s * mine[key(n, B)].astype(np.float64)
                         @ mine[key(n, A)])
            old_errors.append(_relative(old_model, target))
    assert max(errors) < 1e-6, max(errors)
    assert min(old_errors) > 1e-5, min(old_errors)  # the check sees the wire's rounding
    print(f"client-side relative error: {max(errors):.1e} (the float32 mean's residual: "
          f"{min(old_errors):.1e} to {max(old_errors):.1e})")


def _float32_mean(adapters, weights):
    return {k: sum(np.float32(w) * ad[k] for ad, w in zip(adapters, weights, strict=True))
            for k in adapters[0]}


def test_a_node_evaluates_the_model_the_server_saved(tmp_path, monkeypatch, one_thread):
    """A real run: the model each node builds from the last evaluation message (through the
    client app, its node state and the wire) merges to the saved model's weights exactly."""
    seen = []
    original = fedit_client.evaluate

    def spy(cfg, arrays, node, base=None):
        seen.append((copy.deepcopy(arrays), copy.deepcopy(base)))
        return original(cfg, arrays, node, base)

    monkeypatch.setattr(fedit_client, "evaluate", spy)
    cfg, run_dir, rows = _run(tmp_path, "fedex", rounds=2)
    assert rows[-1]["fed_eval_clients"] == 3
    saved = AutoModelForCausalLM.from_pretrained(run_dir / "model").state_dict()
    model, _ = peft_model_for(cfg)
    for arrays, base in seen[-3:]:  # the last round's evaluation, one per node
        set_base(cfg, base)
        load_adapter_state(model, arrays)
        mine = copy.deepcopy(model).merge_and_unload().state_dict()
        assert saved.keys() <= mine.keys()
        assert all(torch.equal(mine[k], v) for k, v in saved.items())
    set_base(cfg, None)


def test_the_residual_costs_one_rank_more():
    """The factors of a round: rank sum_i r_i + r (the extra r columns carry s (B - B~))."""
    cfg, server, strategy = _setup("fedex")
    adapters = _random_adapters(cfg, (16, 16, 16), 0)
    aggregate(strategy, server, 1, _replies(server, adapters))
    for b, a in server.merged.log[1].values():
        assert b.shape[1] == a.shape[0] == 3 * 16 + 16
