"""Node-side pins (``--node-config "require-dp=true max-epsilon=8 ..."``): a node refuses every
message of a run that does not meet them, in one sentence, and never trains for it; whoever
launches a run (any ``--run-config`` override) cannot turn them off."""

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict

from client_app.app import app as client_app
from fedtune.config import Config
from fedtune.errors import ConfigError
from fedtune.node_pins import PINS, Pins, refusal
from fedtune.wire.flower import to_arrayrecord
from tests.conftest import run_loop, small_config
from tests.inprocess_grid import InProcessGrid

STRICT = {"require-dp": True, "max-epsilon": 8.0, "max-delta": 1e-3, "require-secagg": True,
          "min-train-nodes": 3}
MEETS = {"dp": "client", "dp-max-epsilon": 8.0, "dp-delta": 0.0, "dp-population": 1000,
         "secagg": "on", "min-train-nodes": 3}  # delta: 0.1 / 1000
KINDS = ("query.identify", "train", "evaluate", "query.secagg")


def run_config(**overrides) -> dict:
    """A run's flat config as a node receives it (every key, the defaults: dp and secagg off)."""
    return {**Config().to_flat(), **overrides}


def sentence(reason: str) -> bool:
    return reason.endswith(".") and ". " not in reason and "\n" not in reason


@pytest.mark.parametrize(("change", "clause"), [
    ({"dp": "none"}, "its pin require-dp=true needs dp='server' or dp='client', and the run "
                     "has dp='none'; its pin max-epsilon=8 needs DP with a budget "
                     "dp-max-epsilon of at most 8, and the run has dp='none'; its pin "
                     "max-delta=0.001 needs DP with a delta of at most 0.001, and the run has "
                     "dp='none'"),
    ({"dp-max-epsilon": 0.0}, "its pin max-epsilon=8 needs DP with a budget dp-max-epsilon of "
                              "at most 8, and the run has no budget (dp-max-epsilon=0)"),
    ({"dp-max-epsilon": 8.5}, "its pin max-epsilon=8 needs DP with a budget dp-max-epsilon of "
                              "at most 8, and the run has dp-max-epsilon=8.5"),
    ({"dp-population": 50}, "its pin max-delta=0.001 needs DP with a delta of at most 0.001, "
                            "and the run has delta=0.002 (dp-delta=0.0, dp-population=50)"),
    ({"dp-delta": 0.01}, "its pin max-delta=0.001 needs DP with a delta of at most 0.001, and "
                         "the run has delta=0.01 (dp-delta=0.01, dp-population=1000)"),
    ({"dp-population": 0}, "its pin max-delta=0.001 needs DP with a delta of at most 0.001, "
                           "and the run has no delta (dp-delta=0 and no dp-population)"),
    ({"secagg": "off"}, "its pin require-secagg=true needs secagg='on', and the run has "
                        "secagg='off'"),
    ({"min-train-nodes": 2}, "its pin min-train-nodes=3 needs a run that aggregates at least "
                             "3 nodes per round, and the run has min-train-nodes=2"),
])
def test_each_pin_refuses_a_run_that_falls_short_of_it_by_one_key(change, clause):
    nc = {"node-name": "lugano", **STRICT}
    assert refusal("lugano", nc, run_config(**MEETS)) is None  # the run that meets every pin
    reason = refusal("lugano", nc, run_config(**{**MEETS, **change}))
    assert reason == f"node 'lugano' refuses this run: {clause}." and sentence(reason)


def test_a_run_with_dp_off_fails_every_dp_pin_and_all_are_named():
    reason = refusal("lugano", STRICT, run_config())  # the defaults: dp and secagg off
    assert reason.count("its pin") == 5 and sentence(reason), reason
    assert "max-epsilon=8 needs DP with a budget" in reason and "has dp='off'" in reason
    assert refusal("lugano", {"max-epsilon": 8}, run_config(dp="server")) is not None
    assert refusal("lugano", {"max-epsilon": 8}, run_config(**{
        "dp": "server", "dp-max-epsilon": 2})) is None  # int pins and budgets compare as numbers


def test_no_pins_accept_every_run_and_false_flags_pin_nothing():
    assert Pins.from_node_config({"node-name": "a", "data-path": "a.jsonl"}) == Pins()
    nc = {"require-dp": False, "require-secagg": "false"}
    assert refusal("a", nc, run_config()) is None


@pytest.mark.parametrize(("key", "value", "want"), [
    ("max-epsilon", "abc", "a number above 0 (such as max-epsilon=8.0)"),
    ("max-epsilon", -1.0, "a number above 0"),
    ("max-epsilon", 0, "a number above 0"),
    ("max-epsilon", float("nan"), "a number above 0"),
    ("max-epsilon", True, "a number above 0"),
    ("max-delta", 1.0, "a number between 0 and 1 (such as max-delta=1e-05)"),
    ("max-delta", 0.0, "a number between 0 and 1"),
    ("require-dp", "yes", "true or false (such as require-dp=true)"),
    ("require-secagg", 1, "true or false"),
    ("min-train-nodes", 0, "a whole number of at least 1 (such as min-train-nodes=3)"),
    ("min-train-nodes", 2.5, "a whole number of at least 1"),
    ("min-train-nodes", "3", "a whole number of at least 1"),
])
def test_a_malformed_pin_refuses_every_run_in_one_sentence(key, value, want):
    reason = refusal("lugano", {key: value}, run_config(**MEETS))
    assert reason.startswith(f"node 'lugano' has {key}={value!r} in its --node-config, which "
                             f"must be {want}"), reason
    assert reason.endswith("fix its --node-config and restart the SuperNode.") and sentence(reason)
    with pytest.raises(ConfigError):
        Pins.from_node_config({key: value})


@pytest.mark.parametrize("key", ["require-dpp", "max-eps", "min-nodes", "require-DP"])
def test_a_misspelt_pin_is_refused_rather_than_dropped(key):
    """A typo must not leave the node unpinned while its owner believes it is pinned."""
    reason = refusal("lugano", {"node-name": "lugano", key: True}, run_config(**MEETS))
    assert reason is not None and f"'{key}'" in reason and sentence(reason), reason
    assert all(pin in reason for pin in PINS)


def message(kind: str) -> Message:
    arrays = to_arrayrecord({"w": np.zeros(4, np.float32)})
    content = RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": 1})})
    return Message(content, dst_node_id=5, message_type=kind)


@pytest.fixture
def no_work(monkeypatch):
    """Record every call that would train, evaluate or run a SecAgg stage on the node."""
    from fedtune.flower import client, secure

    calls = []
    for module, name in ((client, "train"), (client, "evaluate"), (secure, "stage")):
        def record(*args, _name=name, **kwargs):
            calls.append(_name)
            return RecordDict({"node": ConfigRecord({"name": "worked"})})
        monkeypatch.setattr(module, name, record)
    return calls


def test_the_client_app_refuses_every_message_of_an_unpinned_run_and_never_trains(
        no_work, capsys, tmp_path):
    """The attack: the launcher overrides dp and secagg off (``--run-config "dp='off'"``). The
    pinned node answers each message with the sentence, on its stderr too, and does no work."""
    data = tmp_path / "lugano.jsonl"
    data.write_text("")
    nc = {"node-name": "lugano", "data-path": str(data), **STRICT}
    attack = Context(run_id=1, node_id=5, node_config=nc, state=RecordDict(),
                     run_config=run_config(**{**MEETS, "dp": "off", "secagg": "off"}))
    expected = refusal("lugano", nc, attack.run_config)
    for kind in KINDS:
        reply = client_app(message(kind), attack)
        assert reply.has_error() and reply.error.reason == expected, kind
    assert no_work == []
    assert capsys.readouterr().err.count(f"fedtune: {expected}\n") == len(KINDS)
    honest = Context(run_id=2, node_id=5, node_config=nc, state=RecordDict(),
                     run_config=run_config(**MEETS))
    for kind in KINDS:
        reply = client_app(message(kind), honest)
        assert not reply.has_error(), (kind, reply.error)
    assert no_work == ["train", "evaluate", "stage"]  # the same node works for a run that meets


def test_pins_come_before_the_missing_data_check():
    """A pinned node without data-path names the pin its run fails (the owner's stronger say)."""
    ctx = Context(run_id=1, node_id=5, node_config={"node-name": "x", "require-dp": True},
                  state=RecordDict(), run_config=run_config())
    assert "its pin require-dp=true" in client_app(message("train"), ctx).error.reason


def test_a_pinned_node_is_never_sampled_and_the_server_log_says_why(caplog):
    """Through fedtune's round loop (in process): one of three nodes pinned to DP. A run without
    DP goes on with the other two; the ServerApp logs the node's sentence once; no train
    message ever reaches it."""
    cfg = small_config(**{"fraction-train": 1.0, "fraction-evaluate": 0.0,
                          "min-train-nodes": 2, "num-server-rounds": 1, "local-steps": 1})
    grid = InProcessGrid(client_app, 3, cfg.to_flat())
    pinned = sorted(grid.contexts)[0]
    grid.contexts[pinned].node_config.update({"require-dp": True, "max-epsilon": 8.0})
    rows = []
    with caplog.at_level("WARNING", logger="fedtune"):
        run_loop(grid, cfg, rows.append)
    assert [(r["sampled"], r["clients"]) for r in rows[1:]] == [(2, 2)]
    why = refusal("client-0000", grid.contexts[pinned].node_config, cfg.to_flat())
    assert f"node {pinned} did not identify itself ({why}); it will not be sampled" in caplog.text
    assert pinned not in {m.metadata.dst_node_id for m in grid.sent
                          if m.metadata.message_type == "train"}
