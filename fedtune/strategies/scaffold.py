"""SCAFFOLD (Karimireddy et al., "SCAFFOLD: Stochastic Controlled Averaging for Federated
Learning", ICML 2020, option II) over LoRA adapters: the server strategy and the client hook.

Rounds send the global adapter x and the server's control variate c (record ``scaffold``). A
client corrects every gradient by c - c_i, keeps c_i in its node state (Flower's
``Context.state``) and replies with its adapter y_i and c_i+ - c_i, where
c_i+ = c_i - c + (x - y_i) / (K lr) after K local steps at learning rate lr. The server averages
the adapters (FedAvg by examples, global step size 1) and updates
c += (|S| / N) * mean_i(c_i+ - c_i), N = ``min-available-nodes`` (the federation size;
``fedtune simulate`` sets it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid

from fedtune.algorithms.base import Arrays, NodeState
from fedtune.strategies import builtin
from fedtune.strategies.hooks import StrategyHooks
from fedtune.strategies.state import StatefulStrategy
from fedtune.wire import Records, check_record

RECORD = "scaffold"  # the record (down: c; up: c_i+ - c_i) and the node-state entry (c_i)


class Scaffold(StatefulStrategy, StrategyHooks, builtin.fl.FedAvg):
    """The server side: FedAvg over adapters plus the control variate c."""

    state_attrs = ("control",)

    def __init__(self, num_clients: int, spec: Mapping[str, tuple[int, ...]] | None = None,
                 **kwargs: Any) -> None:
        self.num_clients = max(1, num_clients)
        self.spec = dict(spec or {})
        self.control: dict[str, np.ndarray] | None = None
        super().__init__(**kwargs)

    def check_reply(self, content: Records) -> str | None:
        """Replies also carry c_i+ - c_i, with the adapter's keys and shapes."""
        if RECORD not in content.arrays:
            return f"no '{RECORD}' record (SCAFFOLD control variate change)"
        return check_record(content, RECORD, self.spec)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        if self.control is None:
            self.control = {k: np.zeros_like(v.numpy(), dtype=np.float32)
                            for k, v in arrays.items()}
        messages = list(super().configure_train(server_round, arrays, config, grid))
        control = ArrayRecord({k: Array(v) for k, v in self.control.items()})
        for content in {id(m.content): m.content for m in messages}.values():
            content[RECORD] = control
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        deltas = [r.content.array_records.pop(RECORD) for r in replies]  # not an adapter
        arrays, metrics = super().aggregate_train(server_round, replies)
        if arrays is not None and self.control is not None and deltas:
            for key in self.control:  # (|S| / N) * mean over S  ==  sum over S / N
                total = sum(d[key].numpy().astype(np.float64) for d in deltas)
                self.control[key] = (self.control[key] + total / self.num_clients).astype(
                    np.float32)
        return arrays, metrics


class ScaffoldClient:
    """The client side, one instance per message: the gradient correction c - c_i before the
    local round, c_i+ (kept) and c_i+ - c_i (sent) after it."""

    def __init__(self) -> None:
        self.c: Arrays = {}
        self.c_i: Arrays = {}

    def before_train(self, content: Records, state: NodeState) -> Arrays:
        """The per-key gradient correction c - c_i (c_i starts at zero)."""
        self.c = {k: v.astype(np.float32, copy=False) for k, v in content.arrays[RECORD].items()}
        mine = state.get(RECORD)
        self.c_i = mine if mine is not None else {k: np.zeros_like(v) for k, v in self.c.items()}
        return {k: self.c[k] - self.c_i[k] for k in self.c}

    def after_train(self, x: Arrays, y: Arrays, steps: int, lr: float, state: NodeState,
                    reply: Records) -> None:
        """Keep c_i+ in the node state and add c_i+ - c_i to the reply."""
        scale = 1.0 / (steps * lr)
        c_new = {k: (self.c_i[k] - self.c[k] + (x[k] - y[k]) * scale).astype(np.float32)
                 for k in y}
        state[RECORD] = c_new
        reply.arrays[RECORD] = {k: c_new[k] - self.c_i[k] for k in y}


def build(name: str, cfg, server) -> Scaffold:
    del name
    return Scaffold(num_clients=cfg.server.min_available_nodes, spec=server.spec(),
                    **builtin.common_args())
