"""fedtune's round loop with the real ClientApp, driven through an in-process Grid (no Ray)."""

import math

import numpy as np

from client_app.app import app as client_app
from fedtune.flower.loop import sample
from tests.conftest import run_loop, small_config
from tests.inprocess_grid import InProcessGrid, poison_first_array


def _run(cfg, tamper=None, first_id=1001):
    grid = InProcessGrid(client_app, 3, cfg.to_flat(), tamper=tamper, first_id=first_id)
    rows = []
    arrays = run_loop(grid, cfg, rows.append)
    return rows, arrays, grid


def test_nan_reply_is_dropped_and_the_run_completes(caplog):
    cfg = small_config(**{"fraction-train": 1.0, "fraction-evaluate": 0.0})
    bad_node = None

    def inject_nan(node_id, reply):
        nonlocal bad_node
        if reply.metadata.message_type == "train" and node_id == max(grid_nodes):
            bad_node = node_id
            return poison_first_array(reply)
        return reply

    grid_nodes = [1001 + 7919 * p for p in range(3)]
    with caplog.at_level("WARNING", logger="fedtune"):
        rows, arrays, _ = _run(cfg, tamper=inject_nan)
    assert bad_node is not None
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert all(r["clients"] == 2 and r["dropped"] == 1 for r in rows[1:])
    assert "dropped reply from client-0002: " in caplog.text and "NaN" in caplog.text
    assert all(np.isfinite(v).all() for v in arrays.values())
    assert rows[-1]["eval_loss"] < rows[0]["eval_loss"]


def untimed(value):
    """A row with its timings (any key naming seconds, also in its per-reply reports) left out."""
    if isinstance(value, dict):
        return {k: untimed(v) for k, v in value.items() if "seconds" not in k}
    if isinstance(value, list):
        return [untimed(v) for v in value]
    return value


def test_same_config_same_result_whatever_flower_node_ids():
    cfg = small_config(**{"fraction-train": 0.67, "fraction-evaluate": 0.5})
    rows_a, arrays_a, grid_a = _run(cfg, first_id=1001)
    rows_b, arrays_b, grid_b = _run(cfg, first_id=55)
    for key in arrays_a:
        assert np.array_equal(arrays_a[key], arrays_b[key]), key
    assert [untimed(r) for r in rows_a] == [untimed(r) for r in rows_b]
    assert all(math.isfinite(r["eval_loss"]) for r in rows_a)
    assert rows_a[1]["bytes_down_per_client"] > 0 and rows_a[1]["bytes_up_per_client"] > 0


def test_sampling_is_seeded_and_respects_minimum():
    ids = list(range(10))
    assert sample(ids, 0.3, 2, 0, "train", 1) == sample(ids, 0.3, 2, 0, "train", 1)
    assert len(sample(ids, 0.1, 2, 0, "train", 1)) == 2
    picks = {tuple(sample(ids, 0.3, 2, 0, "train", r)) for r in range(1, 20)}
    assert len(picks) > 5  # different rounds sample different clients


def test_deployment_nodes_read_their_own_data_files(tmp_path):
    """`--node-config "node-name='...' data-path='...'"`: no partitioning, stable names."""
    import json

    from client_app.app import app as real_app
    from fedtune.data.synthetic import make_examples
    from fedtune.node import Node, node_data

    files = []
    for i, category in enumerate(("parity", "first")):
        path = tmp_path / f"site-{i}.jsonl"
        path.write_text("".join(json.dumps({"instruction": e.instruction, "input": e.input,
                                            "output": e.output}) + "\n"
                                for e in make_examples(category, 30, seed=i)))
        files.append(path)
    cfg = small_config(**{"fraction-train": 1.0, "fraction-evaluate": 1.0})
    grid = InProcessGrid(real_app, 2, cfg.to_flat())
    for (_, ctx), name, path in zip(sorted(grid.contexts.items()), ("zurich", "basel"),
                                    files, strict=True):
        ctx.node_config = {"node-name": name, "data-path": str(path)}
    rows = []
    run_loop(grid, cfg, rows.append)
    assert rows[-1]["clients"] == 2 and rows[-1]["fed_eval_clients"] == 2
    assert rows[-1]["eval_loss"] < rows[0]["eval_loss"]
    own = node_data(cfg, Node("zurich", 0, 1, data_path=str(files[0])))
    held = node_data(cfg, Node("zurich", 0, 1, data_path=str(files[0])), held_out=True)
    assert len(own) + len(held) == 30 and len(held) == 3


class SilentGrid(InProcessGrid):
    """A grid on which some nodes never answer train messages (dead or past the timeout)."""

    def __init__(self, *args, silent: set[int], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.silent = silent

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        keep = [m for m in messages if not (m.metadata.message_type == "train"
                                            and m.metadata.dst_node_id in self.silent)]
        return super().send_and_receive(keep, timeout=timeout)


def test_silent_nodes_are_counted_logged_and_too_few_replies_skip_the_round(caplog):
    ids = [1001 + 7919 * p for p in range(3)]
    cfg = small_config(**{"fraction-train": 1.0, "fraction-evaluate": 0.0,
                          "min-train-nodes": 2})
    rows = []
    with caplog.at_level("WARNING", logger="fedtune"):
        run_loop(SilentGrid(client_app, 3, cfg.to_flat(), silent={ids[2]}), cfg, rows.append)
    assert all(r["clients"] == 2 and r["timed_out"] == 1 and not r.get("skipped")
               for r in rows[1:])
    assert "no reply within 600 s from client-0002" in caplog.text

    rows = []
    with caplog.at_level("WARNING", logger="fedtune"):
        run_loop(SilentGrid(client_app, 3, cfg.to_flat(), silent=set(ids[1:])), cfg,
                 rows.append)
    assert [r["round"] for r in rows] == [0, 1, 2]  # the run goes on and finishes
    assert all(r["skipped"] and r["clients"] == 1 and r["timed_out"] == 2 for r in rows[1:])
    assert rows[-1]["eval_loss"] == rows[0]["eval_loss"]  # nothing was aggregated
    assert "round 1 skipped: 1 valid replies, 2 needed" in caplog.text


def test_a_duplicate_node_name_excludes_the_later_node_and_the_run_goes_on(caplog):
    cfg = small_config(**{"fraction-train": 1.0, "fraction-evaluate": 0.0,
                          "min-train-nodes": 2})
    grid = InProcessGrid(client_app, 3, cfg.to_flat())
    later = sorted(grid.contexts)[2]
    for node in sorted(grid.contexts)[1:]:
        grid.contexts[node].node_config["node-name"] = "twin"
    rows = []
    with caplog.at_level("WARNING", logger="fedtune"):
        run_loop(grid, cfg, rows.append)
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert all(r["clients"] == 2 and r["sampled"] == 2 for r in rows[1:])
    assert caplog.text.count(f"node {later} also calls itself 'twin'") == 1
    assert "excluded from this run: give each SuperNode a unique node-name" in caplog.text
    assert later not in {m.metadata.dst_node_id for m in grid.sent
                         if m.metadata.message_type == "train"}


def test_a_node_without_data_is_not_sampled_and_the_server_log_says_why(caplog):
    cfg = small_config(**{"fraction-train": 1.0, "fraction-evaluate": 0.0})
    grid = InProcessGrid(client_app, 3, cfg.to_flat())
    lost = sorted(grid.contexts)[0]
    grid.contexts[lost].node_config = {"node-name": "lost"}  # deployed, no data-path
    rows = []
    with caplog.at_level("WARNING", logger="fedtune"):
        run_loop(grid, cfg, rows.append)
    assert all(r["clients"] == 2 for r in rows[1:])
    assert caplog.text.count("node 'lost' has no data: start its SuperNode with "
                             "--node-config \"data-path='") == 1  # asked each round, logged once
