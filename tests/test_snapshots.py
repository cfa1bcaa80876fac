"""Node state snapshots (``node-state-dir``): what a node keeps between rounds survives a
resumed run, taken from before the round it is asked to train."""

import numpy as np

from fedtune.checkpoint import config_fingerprint
from fedtune.flower import snapshots


def test_a_node_resumes_from_the_snapshot_before_the_round_it_trains(tmp_path):
    state = {"lora-local": {"w": np.arange(3, dtype=np.float32)}}
    snapshots.save(str(tmp_path), "client-0001", 2, state)
    later = {"lora-local": {"w": np.full(3, 7, np.float32)}}
    snapshots.save(str(tmp_path), "client-0001", 3, later)  # the server died before its
    # checkpoint of round 3: a resumed round 3 must start from round 2's state
    assert snapshots.load(str(tmp_path), "client-0001", 3)["lora-local"]["w"].tolist() == [0, 1, 2]
    assert snapshots.load(str(tmp_path), "client-0001", 4)["lora-local"]["w"].tolist() == [7] * 3
    assert snapshots.load(str(tmp_path), "client-0001", 2) == {}  # nothing from before round 2
    assert snapshots.load(str(tmp_path), "client-0002", 9) == {}  # another node: nothing
    snapshots.save(str(tmp_path), "a/b", 1, state)  # an odd name gets its own safe file
    assert snapshots.load(str(tmp_path), "a/b", 2) and not snapshots.load(str(tmp_path), "a_b", 2)


def test_the_fingerprint_ignores_where_results_go_but_not_what_is_computed():
    flat = {"lr": 1e-3, "run-dir": "/a", "resume": "", "node-state-dir": "/x"}
    same = {**flat, "run-dir": "/b", "resume": "/b", "node-state-dir": "/y"}
    assert config_fingerprint(flat) == config_fingerprint(same)
    assert config_fingerprint(flat) != config_fingerprint({**flat, "lr": 2e-3})
