"""A node lost in the middle of a run, as Flower's SuperLink reports it (fast, in-process).

When a SuperNode misses its heartbeats, the SuperLink answers the messages still addressed to it
with an error reply whose *source is the SuperLink* (node id 1) and whose ``reply_to_message_id``
is the lost message, and stops listing the node in ``get_node_ids()``. The real thing, with
processes and a SIGKILL, is ``tests/test_deployment.py::test_supernode_killed_mid_round``.
"""

from __future__ import annotations

from flwr.app import Error, Message
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode

from client_app.app import app as client_app
from tests.conftest import run_loop, small_config
from tests.inprocess_grid import InProcessGrid

REASON = "Error: Node Unavailable - test"


class LosingGrid(InProcessGrid):
    """Nodes in ``lose`` die while their first train message is in flight."""

    def __init__(self, *args, lose: set[int], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lose, self.lost, self.count = set(lose), set(), 0

    def get_node_ids(self) -> list[int]:
        return [i for i in self.contexts if i not in self.lost]

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        for msg in messages:  # Flower's grids give each pushed message its id, in place
            self.count += 1
            msg.metadata.__dict__["_message_id"] = f"msg-{self.count}"
        doomed = self.lost | {m.metadata.dst_node_id for m in messages
                              if m.metadata.message_type == "train"
                              and m.metadata.dst_node_id in self.lose}
        live = [m for m in messages if m.metadata.dst_node_id not in doomed]
        replies = list(super().send_and_receive(live, timeout=timeout))
        for msg in messages:
            if msg in live:
                continue
            self.lost.add(msg.metadata.dst_node_id)
            reply = Message(Error(code=ErrorCode.NODE_UNAVAILABLE, reason=REASON), reply_to=msg)
            reply.metadata.__dict__["_src_node_id"] = SUPERLINK_NODE_ID  # as the SuperLink does
            replies.append(reply)
        return replies


IDS = [1001 + 7919 * p for p in range(3)]
FAST = {"local-steps": 1, "examples-per-client": 8, "eval-examples": 4, "max-new-tokens": 2}


def test_lost_node_is_named_dropped_and_later_rounds_go_on_without_it(caplog, one_thread):
    cfg = small_config(**{"fraction-train": 1.0, "fraction-evaluate": 0.0, "min-train-nodes": 2,
                          "min-available-nodes": 3, "num-server-rounds": 3, **FAST})
    rows = []
    with caplog.at_level("WARNING", logger="fedtune"):
        run_loop(LosingGrid(client_app, 3, cfg.to_flat(), lose={IDS[2]}), cfg, rows.append)
    assert [r["round"] for r in rows] == [0, 1, 2, 3]
    first, *later = rows[1:]
    counts = (first["sampled"], first["clients"], first["dropped"], first["timed_out"])
    assert counts == (3, 2, 1, 0)
    assert all(r["sampled"] == 2 and r["clients"] == 2 and not r.get("skipped") for r in later)
    assert f"dropped reply from client-0002: {REASON}" in caplog.text  # not "node-1"
    assert "no reply within" not in caplog.text  # it did answer (with an error), in time


def test_too_few_nodes_left_skips_rounds_and_the_run_finishes(caplog, one_thread):
    cfg = small_config(**{"fraction-train": 1.0, "fraction-evaluate": 0.0, "min-train-nodes": 2,
                          "min-available-nodes": 3, "round-timeout": 0.5, **FAST})
    rows = []
    with caplog.at_level("WARNING", logger="fedtune"):
        run_loop(LosingGrid(client_app, 3, cfg.to_flat(), lose=set(IDS[1:])), cfg, rows.append)
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert rows[1]["skipped"] and (rows[1]["clients"], rows[1]["dropped"]) == (1, 2)
    assert rows[2]["skipped"] and rows[2]["sampled"] == 0  # one node left: nothing is sent
    assert "only 1 of the 2 nodes needed are connected" in caplog.text
    assert rows[-1]["eval_loss"] == rows[0]["eval_loss"]
