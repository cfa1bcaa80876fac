"""A Flower Grid that delivers messages to ClientApps in this process (no Ray, no network).

Each node has its own Context (node_config with partition-id / num-partitions), exactly what
the simulation engine gives a virtual SuperNode. ``tamper`` lets a test corrupt a node's reply.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
from flwr.app import Array, ConfigRecord, Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid

Tamper = Callable[[int, Message], Message]


class InProcessGrid(Grid):
    def __init__(
        self,
        app: ClientApp,
        num_nodes: int,
        run_config: dict,
        tamper: Tamper | None = None,
        first_id: int = 1001,
    ) -> None:
        import client_app.app

        client_app.app.WARM_UP = False  # the server runs in this process too (see WARM_UP)
        self.app = app
        self.tamper = tamper
        self.contexts = {
            first_id + 7919 * p: Context(
                run_id=1,
                node_id=first_id + 7919 * p,
                node_config={"partition-id": p, "num-partitions": num_nodes},
                state=RecordDict(),
                run_config=dict(run_config),
            )
            for p in range(num_nodes)
        }
        self.sent: list[Message] = []

    def get_node_ids(self) -> list[int]:
        return list(self.contexts)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> list[Message]:
        replies = []
        for msg in messages:
            self.sent.append(msg)
            node = msg.metadata.dst_node_id
            try:
                reply = self.app(msg, self.contexts[node])
            except Exception as err:  # the engine turns a ClientApp crash into an error reply
                reply = Message(Error(code=1, reason=f"ClientApp raised {err!r}"), reply_to=msg)
            replies.append(self.tamper(node, reply) if self.tamper else reply)
        return replies

    # Unused by fedtune's loop.
    def set_run(self, run):  # noqa: D102
        raise NotImplementedError

    @property
    def run(self):  # noqa: D102
        raise NotImplementedError

    def create_message(self, *args, **kwargs):  # noqa: D102
        raise NotImplementedError

    def get_nodes(self):  # noqa: D102
        raise NotImplementedError

    def push_messages(self, messages):  # noqa: D102
        raise NotImplementedError

    def pull_messages(self, message_ids):  # noqa: D102
        raise NotImplementedError


def identify_by_partition(msg: Message, context: Context) -> Message:
    """A toy ClientApp's ``identify`` handler: the node's stable name from its partition."""
    name = f"client-{int(context.node_config['partition-id']):04d}"
    return Message(RecordDict({"node": ConfigRecord({"name": name})}), reply_to=msg)


def poison_first_array(reply: Message) -> Message:
    """A train reply's first array with a NaN in it (what a broken client would send)."""
    arrays = reply.content["arrays"]
    key = next(iter(arrays))
    broken = arrays[key].numpy().copy()
    broken.flat[0] = np.nan
    arrays[key] = Array(broken)
    return reply


def simulate_in_process(argv: list[str], tamper: Tamper | None = None) -> int:
    """``fedtune simulate ARGV`` with every check and setup step as is, the engine swapped for
    this in-process grid (no Ray): the real ServerApp's main and ClientApp, one Context per
    virtual node. What a test that does not test the Ray engine itself runs."""
    from flwr.app import Context, RecordDict

    from client_app.app import app as client_app
    from fedtune import cli
    from server_app.app import main as server_main

    def engine(cfg, num_clients: int, args) -> int:
        from flwr.supercore.task_identity import TaskIdentity

        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1  # for Messages
        flat = cfg.to_flat()
        grid = InProcessGrid(client_app, num_clients, flat, tamper=tamper)
        server_main(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                                  run_config=flat))
        return _exit(cfg)

    import torch

    ray_engine, threads = cli._run_flower_simulation, torch.get_num_threads()
    cli._run_flower_simulation = engine
    torch.set_num_threads(1)  # as a Ray actor given one CPU; tiny tensors gain nothing from more
    try:
        return cli.main(["simulate", *argv])
    finally:
        cli._run_flower_simulation = ray_engine
        torch.set_num_threads(threads)


def _exit(cfg) -> int:
    """``fedtune simulate``'s exit code from the run's summary (as the CLI reads it)."""
    import json
    import sys
    from pathlib import Path

    summary = Path(cfg.output.run_dir) / "summary.json"
    if not summary.exists():
        print(f"fedtune: the simulation ended without a summary; see {cfg.output.run_dir}",
              file=sys.stderr)
        return 1
    done = json.loads(summary.read_text())
    skipped = done.get("skipped_rounds", [])
    return 1 if skipped and len(skipped) == done.get("rounds_run") else 0
