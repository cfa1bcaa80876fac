"""Shorter Flower waits in the deployment tests' processes (issue #27).

``tests/deployment_cluster.py`` puts this folder first on ``PYTHONPATH`` of every process it
starts (SuperLink, SuperNodes, and the ServerApp, ClientApp and ``flwr`` processes they start),
so Python imports this module as each starts. Flower 1.42 fixes two waits in code, with no
option: a SuperNode asks the SuperLink for messages every 3 s, and the ServerApp's grid asks
for replies every 3 s; each message exchange waits for both. With
``FEDTUNE_TEST_FLOWER_POLL=<seconds>`` those two sleeps take that long instead. (Heartbeats
keep Flower's 30 s, so a node counts as lost after 60 s without one. At 10 s, the SuperLink's
minimum, that is 20 s, and a SuperLink slowed for about 12 s by a loaded machine is enough:
on a CI machine 3 times slower than usual, a run most likely lost every node so and skipped
all its rounds.) With
``FEDTUNE_TEST_FLOWER_SQLITE_BUSY_MS=<ms>`` the SuperLink's SQLite connections wait that long
for a lock instead of Flower's fixed 5,000 ms: on a 2-core machine at load average 10 and over
(a whole suite beside the cluster), a SuperLink on a ``--database`` file answered
"database is locked" and a run's ServerApp failed. Nothing else changes: the same Flower code
runs, only these waits differ. Without the variables this does nothing.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

POLL = os.environ.get("FEDTUNE_TEST_FLOWER_POLL")
SQLITE_BUSY_MS = os.environ.get("FEDTUNE_TEST_FLOWER_SQLITE_BUSY_MS")
FLOWER_POLL = 3  # the literal in both loops


class _Clock:
    """``time`` for one Flower module, whose ``sleep(3)`` (its poll) sleeps ``poll`` s."""

    def __init__(self, poll: float) -> None:
        self._poll = poll

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    def sleep(self, seconds: float) -> None:
        time.sleep(self._poll if seconds == FLOWER_POLL else seconds)


def _polls(module: Any) -> None:
    module.time = _Clock(float(POLL))  # type: ignore[arg-type]


def _sqlite_patience(module: Any) -> None:
    module.SQLITE_PRAGMAS = tuple((name, SQLITE_BUSY_MS if name == "busy_timeout" else value)
                                  for name, value in module.SQLITE_PRAGMAS)


PATCHES: dict[str, Any] = {}
if POLL:
    PATCHES.update({"flwr.supernode.start_client_internal": _polls,
                    "flwr.superlink.grid.http_grid": _polls})
if SQLITE_BUSY_MS:  # read by the connect hook of this module, on each new connection
    PATCHES["flwr.supercore.sql_mixin"] = _sqlite_patience


class _AfterImport:
    """Patches a module of :data:`PATCHES` once it has been imported, whoever imports it."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name not in PATCHES:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None and spec.loader is not None:
                run, patch = spec.loader.exec_module, PATCHES[name]

                def exec_module(module: Any, run: Any = run, patch: Any = patch) -> None:
                    run(module)
                    patch(module)

                spec.loader.exec_module = exec_module  # type: ignore[method-assign]
                return spec
        return None


if PATCHES:
    sys.meta_path.insert(0, _AfterImport())
