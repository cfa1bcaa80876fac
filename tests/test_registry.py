"""The node registry's early refresh: the nodes identify themselves while the server builds its
model and evaluates round 0 (a simulation actor then warms up in the meantime, a deployed node's
identify overlaps the ServerApp's imports), and what that refresh meets is raised at round 1."""

from __future__ import annotations

import dataclasses
import threading
import time

import pytest

import fedtune.flower.server as server_module
from client_app.app import app as client_app
from fedtune.algorithms import resolve
from fedtune.flower.registry import IDENTIFY, NodeRegistry
from fedtune.flower.server import run_server
from tests.conftest import small_config
from tests.inprocess_grid import InProcessGrid


def test_the_nodes_identify_while_the_server_builds_its_model(tmp_path, monkeypatch):
    cfg = small_config(**{"num-server-rounds": 1, "local-steps": 1, "examples-per-client": 4,
                          "eval-examples": 2, "client-eval-examples": 2, "max-new-tokens": 1})
    cfg.output.run_dir = str(tmp_path / "run")
    grid = InProcessGrid(client_app, 2, cfg.to_flat())
    identified = threading.Event()
    send = grid.send_and_receive

    def spy(messages, *, timeout=None):
        messages = list(messages)
        replies = send(messages, timeout=timeout)
        if any(m.metadata.message_type == IDENTIFY for m in messages):
            identified.set()
        return replies

    monkeypatch.setattr(grid, "send_and_receive", spy)
    algorithm = resolve(cfg)
    waited = []

    def build(c):  # the server's model build waits for the nodes' names: they come meanwhile
        waited.append(identified.wait(60))
        return algorithm.server(c)

    monkeypatch.setattr(server_module, "resolve",
                        lambda c: dataclasses.replace(algorithm, server=build))
    run_server(grid, cfg)
    assert waited == [True]
    assert [m.metadata.message_type for m in grid.sent[:2]] == [IDENTIFY, IDENTIFY]
    assert (tmp_path / "run" / "summary.json").exists()


class _NoNodes:
    def get_node_ids(self):
        return []


def test_an_early_refresh_that_finds_too_few_nodes_raises_at_the_first_round():
    registry = NodeRegistry(_NoNodes(), timeout=1.0)
    registry.refresh_early(2, wait=0.2)
    with pytest.raises(TimeoutError, match="only 0 of the 2 nodes"):
        registry.refresh(2, 300.0)


def test_stop_ends_an_early_refresh_that_waits_for_nodes():
    registry = NodeRegistry(_NoNodes(), timeout=1.0)
    registry.refresh_early(2, wait=300.0)
    early = registry._early
    start = time.monotonic()
    registry.stop()
    early.join(5.0)
    assert not early.is_alive() and time.monotonic() - start < 5.0
