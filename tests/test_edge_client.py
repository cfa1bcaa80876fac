"""Edge clients: replies carry only the declared records (never private data), and a FedKSeed
node's cache folder spares a new ClientApp process the replay of a version it already built."""

import hashlib
import json

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict

from client_app.app import app as client_app
from fedtune.algorithms.fedkseed import model as zo_model
from fedtune.data.synthetic import make_examples
from fedtune.seeded.shared import IDENTITY, identity_digest
from fedtune.wire.flower import recorddict_to_proto, to_arrayrecord
from tests.conftest import small_config

CANARY = "patient-7f3a9c-record"  # a string only the node's private file holds
DECLARED = {"arrays", "metrics", "zo", "scaffold", "data"}
ZO = {"algorithm": "fedkseed", "zo-seeds": 32, "zo-steps": 3, "batch-size": 2}


def private_file(tmp_path):
    path = tmp_path / "site.jsonl"
    path.write_text("".join(
        json.dumps({"instruction": f"{e.instruction} ({CANARY})", "input": e.input,
                    "output": e.output}) + "\n" for e in make_examples("parity", 24, seed=3)))
    return path


def context(cfg, node_config):
    return Context(run_id=1, node_id=5, node_config=node_config, state=RecordDict(),
                   run_config=cfg.to_flat())


def message(kind, arrays, **config):
    content = RecordDict({"arrays": to_arrayrecord(arrays),
                          "config": ConfigRecord({"server-round": 1, **config})})
    return Message(content, dst_node_id=5, message_type=kind)


def adapter(cfg):
    from fedtune.algorithms.fedit.model import initial_adapter

    return initial_adapter(cfg)


@pytest.mark.parametrize("algorithm", ["fedit", "fedkseed"])
def test_replies_hold_only_declared_records_and_no_private_text(tmp_path, algorithm, one_thread):
    cfg = small_config(**(ZO if algorithm == "fedkseed" else {}))
    private = private_file(tmp_path)
    ctx = context(cfg, {"node-name": "site", "data-path": str(private)})
    if algorithm == "fedkseed":
        arrays = {"accumulated": np.zeros(32, np.float32)}
        extra = server_identity(cfg)
    else:
        arrays, extra = adapter(cfg), {"lr": 1e-3}
    for kind in ("train", "evaluate"):
        reply = client_app(message(kind, arrays, **extra), ctx)
        assert not reply.has_error(), reply.error
        content = reply.content
        assert set(content.keys()) <= DECLARED
        assert not content.config_records.keys() - {"zo", "data"}
        if kind == "train":  # a deployed node names its file (hash) and its category labels
            data = content["data"]
            assert data["sha256"] == hashlib.sha256(private.read_bytes()).hexdigest()
            assert list(data["categories"]) == []  # the file has no category field
        wire = recorddict_to_proto(content).SerializeToString()
        assert CANARY.encode() not in wire and b"even" not in wire  # no prompt, no answer
        metrics = content["metrics"]
        assert all(isinstance(v, int | float) for v in metrics.values())


def test_a_node_cache_spares_the_next_process_the_replay(tmp_path, one_thread):
    cfg = small_config(**ZO)
    ctx = context(cfg, {"node-name": "site", "data-path": str(private_file(tmp_path)),
                        "cache-dir": str(tmp_path / "cache")})
    a = np.zeros(32, np.float32)
    a[[1, 5, 9]] = [0.5, -1.0, 2.0]  # a version no process has built yet
    identity = server_identity(cfg)
    zo_model._cached.cache_clear()  # as a fresh ClientApp process
    train = client_app(message("train", {"accumulated": a}, **identity), ctx)
    assert not train.has_error(), train.error
    (cached,) = (tmp_path / "cache").glob("versions-*/S-*.i64")
    at_node = cfg.__class__.from_flat({**cfg.to_flat(), "cache-dir": str(tmp_path / "cache")})
    assert zo_model.zo_model_for(at_node).applied == [3]  # the train process caught up 3 seeds
    zo_model._cached.cache_clear()  # a process without the cache computes the same bits
    alone = zo_model.zo_model_for(cfg)
    alone.load(a)
    want = alone.checksum()

    zo_model._cached.cache_clear()  # the evaluate message runs in another new process
    evaluate = client_app(message("evaluate", {"accumulated": a}), ctx)
    assert not evaluate.has_error(), evaluate.error
    fresh = zo_model.zo_model_for(at_node)
    assert fresh.applied == [0], "caught up a version that the node's cache holds"
    assert fresh.checksum() == want and cached.exists()


def test_a_client_of_another_model_refuses_the_round_naming_what_differs(tmp_path):
    cfg = small_config(**ZO)
    ctx = context(cfg, {"node-name": "site", "data-path": str(private_file(tmp_path))})
    other = {**zo_model.zo_model_for(cfg).identity, "model": "0" * 32, "zo-lr": "0.5"}
    identity = {IDENTITY: identity_digest(other)}  # what that server's round config carries
    with pytest.raises(ValueError, match=r"the model, seed pool, zo-lr or zo-eps of this client "
                       r"differ from the server's \(its identity digest\)"):
        client_app(message("train", {"accumulated": np.zeros(32, np.float32)}, **identity), ctx)


def server_identity(cfg) -> dict:
    """What the server's round config says a version means (FedKSeedServer.train_config): the
    digest of its identity."""
    return {IDENTITY: identity_digest(zo_model.zo_model_for(cfg).identity)}


def test_a_deployed_node_without_data_path_refuses_in_one_sentence(one_thread):
    """No partition-id (not the simulation engine) and no data-path: every message gets an
    error reply naming the missing node config; data-path='builtin' asks for the built-in data."""
    cfg = small_config()
    ctx = context(cfg, {"node-name": "site"})
    for kind in ("query.identify", "train", "evaluate"):
        reply = client_app(message(kind, adapter(cfg), lr=1e-3), ctx)
        assert reply.has_error()
        assert reply.error.reason == (
            "node 'site' has no data: start its SuperNode with --node-config "
            "\"data-path='<its data file>'\" (or data-path='builtin' for fedtune's built-in "
            "synthetic data)")
    builtin = context(cfg, {"node-name": "site", "data-path": "builtin"})
    reply = client_app(message("train", adapter(cfg), lr=1e-3), builtin)
    assert not reply.has_error(), reply.error
    assert reply.content["metrics"]["num-examples"] > 0


def test_the_data_report_names_the_files_own_category_field(tmp_path):
    """A run's data-fields (its caller chooses them) cannot make the report carry record text:
    with category mapped to output, the labels are still the file's own category field."""
    from fedtune.node import Node, data_report

    path = tmp_path / "site.jsonl"
    path.write_text("".join(
        json.dumps({"instruction": e.instruction, "input": e.input, "output": e.output,
                    "category": "arith"}) + "\n" for e in make_examples("parity", 24, seed=3)))
    node = Node(name="site", partition_id=0, num_partitions=1, data_path=str(path))
    for fields in ("", "category=output"):
        report = data_report(small_config(**{"data-fields": fields}), node)
        assert report == {"sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                          "categories": ["arith"]}, fields


def test_only_a_simulation_actor_warms_up_after_identify(tmp_path):
    """A Ray actor imports torch, transformers and peft in the background once it has answered
    ``identify`` (it lives on); a deployed ClientApp, a process per message, does not."""
    import subprocess
    import sys

    code = f"""
import sys
from flwr.supercore.task_identity import TaskIdentity
TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
from flwr.app import ConfigRecord, Context, Message, RecordDict
import client_app.app as ca
from fedtune.config import Config

def identify(node_config):
    ctx = Context(run_id=1, node_id=5, node_config=node_config, state=RecordDict(),
                  run_config=Config().to_flat())
    msg = Message(RecordDict({{"config": ConfigRecord({{}})}}), dst_node_id=5,
                  message_type="query.identify")
    assert not ca.app(msg, ctx).has_error()

identify({{"node-name": "site", "data-path": {str(private_file(tmp_path))!r}}})
deployed = (ca._warming is not None, "torch" in sys.modules)
identify({{"partition-id": 0, "num-partitions": 2}})
ca._warmed()
print(deployed, ca._warming is not None, "peft" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert done.stdout.strip().splitlines()[-1] == "(False, False) True True", done.stderr[-2000:]


def test_the_in_process_grid_starts_no_warm_up_beside_its_server(monkeypatch):
    """The in-process grid runs the ServerApp in the same process: a warm-up there imported
    transformers beside the server's own import, and the server's
    ``from transformers import LlamaForCausalLM`` failed (transformers' lazy imports are not
    thread-safe), so the grid turns the warm-up off."""
    from flwr.app import ConfigRecord, Message, RecordDict

    import client_app.app as ca
    from fedtune.config import Config
    from tests.inprocess_grid import InProcessGrid

    monkeypatch.setattr(ca, "WARM_UP", True)
    monkeypatch.setattr(ca, "_warming", None)
    grid = InProcessGrid(ca.app, 1, Config().to_flat())
    (node,) = grid.get_node_ids()
    msg = Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=node,
                  message_type="query.identify")
    (reply,) = grid.send_and_receive([msg])
    assert not reply.has_error()
    assert ca._warming is None
