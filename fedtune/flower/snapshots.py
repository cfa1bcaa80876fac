"""A node's kept state on disk, so that a resumed run (a new Flower run, with empty node
state) continues each node from the round the server's checkpoint closed.

Flower's ``Context.state`` lives as long as the run; a server killed and resumed starts a new
run. With a state folder, a node also writes what it keeps (SCAFFOLD's c_i, FedSA-LoRA's B, a
merged base) after each local round, tagged with that round, and keeps the previous snapshot:
the server may have died after this node's reply but before its checkpoint, so a node that
starts with empty state takes the newest snapshot from before the round it is asked to train.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

import numpy as np

State = dict[str, dict[str, np.ndarray]]


def _paths(directory: str, node: str) -> tuple[Path, Path]:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", node)
    if safe != node:  # two odd names must not share a file
        safe += "-" + hashlib.sha256(node.encode()).hexdigest()[:8]
    base = Path(directory) / safe
    return base.with_suffix(".npz"), base.with_suffix(".prev.npz")


def _round(path: Path) -> int | None:
    try:
        with np.load(path, allow_pickle=False) as data:
            return int(data["round"])
    except (OSError, ValueError, KeyError):
        return None


def save(directory: str, node: str, server_round: int, state: State) -> None:
    """Write ``state`` as the node's snapshot of ``server_round`` (atomically), keeping the
    previous round's as ``.prev``."""
    current, previous = _paths(directory, node)
    current.parent.mkdir(parents=True, exist_ok=True)
    have = _round(current)
    if have is not None and have < server_round:
        os.replace(current, previous)
    payload = {"round": np.array(server_round)}
    payload.update({f"{name}/{key}": value for name, arrays in state.items()
                    for key, value in arrays.items()})
    fd, tmp = tempfile.mkstemp(dir=current.parent, suffix=".npz")
    with os.fdopen(fd, "wb") as fh:
        np.savez(fh, **payload)
    os.replace(tmp, current)


def load(directory: str, node: str, before_round: int) -> State:
    """The newest snapshot written before ``before_round`` (empty if none)."""
    for path in _paths(directory, node):
        have = _round(path)
        if have is not None and have < before_round:
            state: State = {}
            with np.load(path, allow_pickle=False) as data:
                for name in data.files:
                    if name != "round":
                        entry, _, key = name.partition("/")
                        state.setdefault(entry, {})[key] = data[name]
            return state
    return {}
