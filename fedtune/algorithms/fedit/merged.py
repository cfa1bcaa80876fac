"""The merged base change of FLoRA and FedEx-LoRA: kept by the server, delivered to the nodes.

Each round merges a change D_t = Bs_t @ As_t into the frozen base weights of every LoRA layer
(:func:`~fedtune.algorithms.fedit.factors.stacked`). The server keeps the running sum
Delta_t = Delta_{t-1} + D_t (float32, the model is W0 + Delta + s B A) and the factors of the
recent rounds. A node keeps its own Delta and the round it is at in its node state; each message
brings it up to date with whichever is smaller:

- the factors (Bs_t, As_t) of the rounds it missed, which it multiplies and adds in round order
  exactly as the server did (the same float32 operations: every party holds the same bits), or
- the whole Delta, which it takes as is (``from`` = 0).

The server tracks the round each node is at: a node that replied without error is at the round
it was sent; one that failed or timed out is unknown, and gets the whole Delta next time (a node
whose state does not match what it is sent fails with :class:`BaseOutOfSync` rather than train
on a wrong base). Rounds whose factors cost more than the whole Delta for every node still behind
them are forgotten, so the server never holds more than about twice the dense change.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import numpy as np

from fedtune.algorithms.fedit.factors import product
from fedtune.wire import Records

RECORD = "lora-base"  # arrays: the update; configs: RECORD + "-version" {from, to, whole}
VERSION = RECORD + "-version"
Factors = dict[str, tuple[np.ndarray, np.ndarray]]


class BaseOutOfSync(RuntimeError):
    """A node's merged base is not the one the server's update starts from."""


def _size(factors: Factors) -> int:
    return sum(b.nbytes + a.nbytes for b, a in factors.values())


class MergedBase:
    """The server's side: Delta, the recent rounds' factors and where each node is."""

    def __init__(self, shapes: Mapping[str, tuple[int, int]]) -> None:
        self.shapes = dict(shapes)  # layer -> (out, in) of its base weight
        self.delta = {n: np.zeros(s, np.float32) for n, s in self.shapes.items()}
        self.round = 0  # Delta includes the changes of rounds 1..round
        self.log: dict[int, Factors] = {}
        self.nodes: dict[str, int | None] = {}  # node name -> its round (None: unknown)

    @property
    def dense_bytes(self) -> int:
        return sum(4 * o * i for o, i in self.shapes.values())

    def add(self, server_round: int, factors: Factors) -> None:
        """Merge round ``server_round``'s change."""
        for name, f in factors.items():
            self.delta[name] = self.delta[name] + product(f)
        self.round = server_round
        self.log[server_round] = factors
        suffix = 0  # keep the newest rounds whose factors, summed, cost less than Delta
        for rnd in sorted(self.log, reverse=True):
            suffix += _size(self.log[rnd])
            if suffix >= self.dense_bytes:
                for old in [r for r in self.log if r <= rnd]:
                    del self.log[old]
                break

    def update_for(self, node: str) -> Records:
        """What brings ``node`` to the current round: the missed factors, or the whole Delta."""
        have = self.nodes.get(node, 0)
        missed = range((have or 0) + 1, self.round + 1)
        whole = (have is None or any(r not in self.log for r in missed)
                 or sum(_size(self.log[r]) for r in missed) >= self.dense_bytes)
        start = 0 if whole else have
        arrays: dict[str, np.ndarray] = {}
        if whole:
            arrays = dict(self.delta) if self.round else {}
        else:
            for rnd in missed:
                for name, (b, a) in self.log[rnd].items():
                    arrays[f"{rnd}/{name}/B"], arrays[f"{rnd}/{name}/A"] = b, a
        return Records(arrays={RECORD: arrays},
                       configs={VERSION: {"from": start, "to": self.round, "whole": whole}})

    def delivered(self, node: str, ok: bool, to: int) -> None:
        """``node`` replied (``ok``: without error) to a message that brought it to ``to``."""
        self.nodes[node] = to if ok else None

    def forget_nodes(self) -> None:
        """After a resume without node snapshots the nodes start afresh (Flower's node state
        lives as long as the run): each gets the whole Delta on first contact."""
        self.nodes.clear()

    def state_dict(self) -> dict[str, np.ndarray]:
        state = {f"delta/{n}": d for n, d in self.delta.items()}
        state["round"] = np.array(self.round)
        state["nodes"] = np.frombuffer(json.dumps(self.nodes, sort_keys=True).encode(), np.uint8)
        for rnd, factors in self.log.items():
            for name, (b, a) in factors.items():
                state[f"log/{rnd}/{name}/B"], state[f"log/{rnd}/{name}/A"] = b, a
        return state

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        self.round = int(state["round"])
        self.log = {}
        for k, v in state.items():
            kind, _, rest = k.partition("/")
            if kind == "nodes":
                self.nodes = json.loads(np.asarray(v, np.uint8).tobytes().decode())
            elif kind == "delta":
                self.delta[rest] = np.asarray(v, np.float32)
            elif kind == "log":
                rnd, _, tail = rest.partition("/")
                name, _, which = tail.rpartition("/")
                pair = self.log.setdefault(int(rnd), {}).setdefault(name, [None, None])
                pair[0 if which == "B" else 1] = np.asarray(v, np.float32)
        self.log = {r: {n: (p[0], p[1]) for n, p in f.items()} for r, f in self.log.items()}


def apply_update(delta: dict[str, np.ndarray], at: int, content: Records
                 ) -> tuple[dict[str, np.ndarray], int]:
    """A node's side: its (Delta, round) brought up to date by the message's update.
    Raises :class:`BaseOutOfSync` when the update does not start where the node is."""
    conf = content.configs[VERSION]
    start, to, whole = int(conf["from"]), int(conf["to"]), bool(conf["whole"])
    arrays = content.arrays.get(RECORD, {})
    if at == to:
        return delta, at
    if whole:
        return {k: np.asarray(v, np.float32) for k, v in arrays.items()}, to
    if at != start:
        raise BaseOutOfSync(f"this node's merged base is at round {at}, but the update starts "
                            f"at round {start}")
    delta = dict(delta)
    for rnd in range(start + 1, to + 1):
        names = [k[len(f"{rnd}/"):-2] for k in arrays if k.startswith(f"{rnd}/")
                 and k.endswith("/B")]
        for name in names:
            change = product((np.asarray(arrays[f"{rnd}/{name}/B"], np.float32),
                              np.asarray(arrays[f"{rnd}/{name}/A"], np.float32)))
            delta[name] = delta.get(name, np.zeros_like(change)) + change  # as the server
    return delta, to
