"""Load (issue #18, item 4): the server's per-round work does not grow with the connected nodes.

A Ray simulation of 1,000 virtual clients takes minutes on a 2-core machine (Flower's engine
polls every node's queue every 0.1 s; ``simulations/bench_load.py`` measures it), so this test
runs fedtune's real round loop, ClientApp and checkpoints on the in-process grid at 1,000 nodes
(10 sampled per round, one local step) and counts the server's Python calls in rounds 2 and 3,
with the clients' own work left out: one call more per extra node per round fails it.
"""

from __future__ import annotations

import cProfile
import pstats
from pathlib import Path
from typing import Any

import pytest
from flwr.app import Message

from client_app.app import app as client_app
from tests.conftest import small_config
from tests.inprocess_grid import InProcessGrid

SAMPLED = 10  # clients per round at every size
ROUNDS = 3


class ServerOnlyGrid(InProcessGrid):
    """An in-process grid whose ClientApp calls run with the server's profiler paused."""

    profiler: cProfile.Profile | None = None
    messages: list[tuple[int, str]]  # (round, message type) of everything sent

    def send_and_receive(self, messages, *, timeout=None) -> list[Message]:
        replies = []
        for msg in messages:
            if self.profiler is not None:
                self.profiler.disable()
            try:
                replies += super().send_and_receive([msg], timeout=timeout)
            finally:
                if self.profiler is not None:
                    self.profiler.enable()
        return replies


def _run(nodes: int, tmp: Path) -> tuple[int, list[dict[str, Any]], InProcessGrid]:
    """(server-side Python calls in rounds 2..3, the rows, the grid) of a run on ``nodes``."""
    from fedtune.algorithms import resolve
    from fedtune.checkpoint import Checkpoint, save_checkpoint, strategy_state
    from fedtune.flower.loop import run_rounds
    from fedtune.results import RunWriter
    from fedtune.strategies import build_strategy

    cfg = small_config(**{"local-steps": 1, "batch-size": 2, "examples-per-client": 8,
                          "max-seq-len": 64,
                          "eval-examples": 4, "client-eval-examples": 2, "max-new-tokens": 1,
                          "num-server-rounds": ROUNDS, "fraction-train": SAMPLED / nodes,
                          "fraction-evaluate": 1 / nodes, "min-evaluate-nodes": 1,
                          "eval-every": ROUNDS, "min-train-nodes": 2,
                          "min-available-nodes": nodes, "output-dir": str(tmp),
                          "run-name": f"load{nodes}"})
    grid = ServerOnlyGrid(client_app, nodes, cfg.to_flat())
    algorithm = resolve(cfg)
    algo = algorithm.server(cfg)
    strategy = build_strategy(cfg, algorithm.payload, algo)
    run_dir = tmp / f"load{nodes}"
    writer = RunWriter(run_dir, cfg)
    profiler = cProfile.Profile()

    def on_checkpoint(rnd: int, arrays: dict) -> None:
        save_checkpoint(run_dir, Checkpoint(rnd, cfg.to_flat(), arrays, algo.state_dict(),
                                            strategy_state(strategy), writer.rows))
        if rnd == 1:  # round 1 identifies every node once; count what every round does
            grid.profiler = profiler
            profiler.enable()

    run_rounds(grid, cfg, algo, strategy, writer.log_round, wait_for_nodes=1,
               on_checkpoint=on_checkpoint)
    profiler.disable()
    grid.profiler = None
    return pstats.Stats(profiler).total_calls, writer.rows, grid


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[int, tuple[int, list[dict[str, Any]], InProcessGrid]]:
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1  # module scope
    tmp = tmp_path_factory.mktemp("load")
    return {n: _run(n, tmp) for n in (100, 1000)}


def test_a_thousand_nodes_finish_with_ten_sampled_per_round(runs) -> None:
    _, rows, grid = runs[1000]
    assert [r["round"] for r in rows] == list(range(ROUNDS + 1))
    assert all(r["clients"] == SAMPLED and r["dropped"] == 0 for r in rows[1:])
    assert rows[-1]["eval_loss"] < rows[0]["eval_loss"]
    kinds = [m.metadata.message_type for m in grid.sent]
    assert kinds.count("query.identify") == 1000  # every node named once, in round 1 only
    assert kinds.count("train") == SAMPLED * ROUNDS


def test_server_calls_per_round_do_not_grow_with_the_nodes(runs) -> None:
    """Rounds 2-3 at 1,000 nodes make fewer than 0.5 more Python calls per extra node and
    round than at 100: a per-node loop in sampling, naming, configs, rows or checkpoints adds
    at least one call per node and round (1,800 here) and fails."""
    small, large = runs[100][0], runs[1000][0]
    assert small > 1000  # the profile saw the server's rounds
    assert large - small < 0.5 * (1000 - 100) * (ROUNDS - 1), (small, large)
