"""``fedtune simulate`` on the in-process grid: the same command line, no Ray.

    python -m simulations.inprocess_simulate --num-clients 1000 --run-config "..."

Every check and setup step of ``fedtune simulate`` runs as is (``fedtune.cli.simulate``); only
the engine differs: the ServerApp's main drives ``tests.inprocess_grid.InProcessGrid``, which
calls the ClientApp in this process for each message, with each virtual node's own Context
(partition id, number of partitions), as the simulation engine gives it. 1,000 virtual
clients then cost one Context each, not a Ray actor queue per node (Flower's engine polls
every node's queue every 0.1 s), so large populations fit a 2-core machine.

With ``dp=off``, the L2 norm of every train reply's contribution, computed as the DP wrapper
would clip it (the algorithm's payload, :mod:`fedtune.payloads`: FedIT's update y - x over the
adapter, FedKSeed's per-seed sums), is written to ``update-norms.jsonl`` in the run folder, one
row per round: how the privacy benchmark chooses the clip norm C. DP runs record nothing per
client.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from flwr.app import Context, Message, RecordDict

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # tests.inprocess_grid and the apps, from a checkout
    sys.path.insert(0, str(ROOT))

from tests.inprocess_grid import InProcessGrid  # noqa: E402

NORMS_FILE = "update-norms.jsonl"
TRAIN = "train"


class NormGrid(InProcessGrid):
    """An in-process grid that records each train reply's contribution norm per round, as
    the algorithm's payload (:mod:`fedtune.payloads`, the object DP clips with) measures it
    against the global arrays the client received (float32, as :mod:`fedtune.strategies.dp`
    takes them)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.server_side = None  # the algorithm's server side (its payload), once built
        self.norms: dict[int, list[float]] = {}

    def send_and_receive(self, messages, *, timeout=None) -> list[Message]:
        from fedtune.payloads import payload_of, record_of
        from fedtune.wire.flower import to_records

        payload = payload_of(self.server_side)
        replies = []
        for msg in messages:
            received = to_records(msg.content) if msg.metadata.message_type == TRAIN else None
            (reply,) = super().send_and_receive([msg], timeout=timeout)
            if received is not None and not reply.has_error():
                rnd = int(msg.content["config"]["server-round"])
                reference = {k: np.asarray(v).astype(np.float32)
                             for k, v in received.arrays.get("arrays", {}).items()}
                record = record_of(payload, to_records(reply.content))
                vec = payload.contribution(record, reference)
                self.norms.setdefault(rnd, []).append(float(np.linalg.norm(vec)))
            replies.append(reply)
        return replies


def write_norms(norms: dict[int, list[float]], path: Path) -> None:
    """One row per round: its norms (sorted) and their quantiles."""
    with path.open("w") as fh:
        for rnd, values in sorted(norms.items()):
            v = np.sort(np.asarray(values))
            fh.write(json.dumps({"round": rnd, "count": int(v.size),
                                 **{f"p{q}": float(np.percentile(v, q)) for q in (10, 50, 90)},
                                 "norms": [round(float(x), 6) for x in v]}) + "\n")


def run_in_process(cfg, num_clients: int, args: argparse.Namespace) -> int:
    """What ``fedtune.cli._run_flower_simulation`` does, on the in-process grid."""
    from flwr.supercore.task_identity import TaskIdentity

    from client_app.app import app as client_app
    from fedtune.flower import server
    from server_app.app import main as server_main

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
    flat = cfg.to_flat()
    grid = NormGrid(client_app, num_clients, flat)
    build = server.build_strategy

    def keep_server_side(*args, **kwargs):  # build_strategy(cfg, payload kind, server side)
        grid.server_side = args[-1]
        return build(*args, **kwargs)

    server.build_strategy = keep_server_side
    try:
        server_main(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                                  run_config=flat))
    finally:
        server.build_strategy = build
    run_dir = Path(cfg.output.run_dir)
    if not cfg.privacy.enabled:
        write_norms(grid.norms, run_dir / NORMS_FILE)
    summary = run_dir / "summary.json"
    if not summary.exists():
        print(f"fedtune: the run ended without a summary; see {run_dir}", file=sys.stderr)
        return 1
    done = json.loads(summary.read_text())
    skipped = done.get("skipped_rounds", [])
    return 1 if skipped and len(skipped) == done.get("rounds_run") else 0


def main(argv: list[str] | None = None) -> int:
    """``fedtune simulate`` with its engine swapped for :func:`run_in_process`."""
    import torch

    from fedtune import cli

    torch.set_num_threads(1)  # one process does the work of every client; keep it to one core
    engine = cli._run_flower_simulation
    cli._run_flower_simulation = run_in_process
    try:
        return cli.main(["simulate", *(sys.argv[1:] if argv is None else argv)])
    finally:
        cli._run_flower_simulation = engine


if __name__ == "__main__":
    sys.exit(main())
