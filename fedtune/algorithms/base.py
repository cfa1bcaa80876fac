"""The algorithm interface: what the apps, the CLI, the baselines and the checkpoint code ask
of an algorithm, so that none of them ever compares algorithm names.

An algorithm is an :class:`Algorithm` entry in :mod:`fedtune.algorithms`' registry. It names
its client side (a node's local round and evaluation), its server side (initial state, per-round
train config, central evaluation, reply check, state for checkpoints, the saved result) and the
kind of update its strategies aggregate (``payload``), which decides the strategies that fit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from fedtune.wire import Records

if TYPE_CHECKING:
    from fedtune.config import Config
    from fedtune.node import Node

Arrays = dict[str, np.ndarray]
#: Arrays a node keeps between rounds (Flower's ``Context.state``; SCAFFOLD's c_i), by name.
NodeState = dict[str, Arrays]


class ClientSide(Protocol):
    """A node's work for one message; built per message from the run's config."""

    def train(self, content: Records, node: Node, state: NodeState) -> Records: ...

    def evaluate(self, content: Records, node: Node, state: NodeState) -> Records: ...


class ClientHook(Protocol):
    """A strategy's half on the node (SCAFFOLD's control variates), one instance per message.
    The runtime builds it from the strategy's registry entry and hands it to an algorithm's
    client side (``Algorithm.client_hooks``), so algorithms never import strategies."""

    def before_train(self, content: Records, state: NodeState) -> Arrays | None:
        """A per-key gradient correction for the local round (None: none)."""

    def after_train(self, x: Arrays, y: Arrays, steps: int, lr: float, state: NodeState,
                    reply: Records) -> None:
        """Sees the round's start ``x`` and end ``y``; may keep state and add reply records."""


class ServerHooks:
    """The round loop's optional calls into a server side, each a no-op by default; a server
    side inherits this and overrides what it needs (FedIT's LoRA variants: all four; Ferret:
    ``receive``)."""

    def down_records(self, node: str) -> Records | None:
        """Records added to one node's train and evaluate messages (None: nothing)."""
        del node
        return None

    def delivered(self, node: str, ok: bool) -> None:
        """Whether that node's train reply came without error."""
        del node, ok

    def receive(self, replies: list[Records]) -> list[Records]:
        """The valid train replies (after the trust policy), before the strategy."""
        return replies

    def merge(self, server_round: int, arrays: Arrays) -> Arrays:
        """The strategy's result, before it becomes the global model."""
        del server_round
        return arrays


class ServerSide(Protocol):
    """The server's half of an algorithm; the round loop drives it. A server side inherits
    :class:`ServerHooks` (the four hooks below, no-ops unless overridden). ``payload``
    (:class:`fedtune.payloads.Payload`): how one client's update is read, measured and scaled
    (the trust policy, DP, SecAgg); named arrays when absent (:func:`fedtune.payloads.payload_of`).
    """

    def down_records(self, node: str) -> Records | None: ...

    def delivered(self, node: str, ok: bool) -> None: ...

    def receive(self, replies: list[Records]) -> list[Records]: ...

    def merge(self, server_round: int, arrays: Arrays) -> Arrays: ...

    #: dtype of the outgoing ``arrays`` record (None: as the strategy made it)
    wire_dtype: type | None

    def initial_arrays(self) -> Arrays: ...

    def train_config(self, server_round: int) -> dict[str, Any]: ...

    def check_reply(self, content: Records) -> str | None: ...

    def evaluate(self, arrays: Arrays) -> dict[str, float]: ...

    def state_dict(self) -> Arrays: ...

    def load_state_dict(self, state: Arrays) -> None: ...

    def save(self, arrays: Arrays, run_dir: Path) -> Path: ...


def _nothing(cfg: Config) -> None:
    del cfg


@dataclass(frozen=True)
class Algorithm:
    """One registry entry.

    ``client``/``server`` build the two sides from the run's config; ``payload`` is the update
    kind its strategies must accept (``arrays``: named float arrays such as LoRA adapters, for
    any array strategy; ``seeds``: (seed index, scalar) pairs over a shared seed pool);
    ``check`` raises ``ConfigError`` for configs this algorithm cannot run; ``load_result``
    reads the final model back from the run folder its server side saved;
    ``simulation_setup`` sets what ``fedtune simulate`` chooses for it (e.g. a shared cache
    inside the run folder). ``client_hooks``: its client side runs a
    strategy's client half (SCAFFOLD's), given as ``client(cfg, hook)`` with ``hook`` a
    :class:`ClientHook` or None; strategies that have one fit only such algorithms. A
    baseline (``federated=False``) runs in one process through ``run(cfg, num_clients)``
    instead of Flower.
    """

    name: str
    summary: str
    payload: str = "arrays"
    client: Callable[..., ClientSide] | None = None  # (cfg) or, with client_hooks, (cfg, hook)
    server: Callable[[Config], ServerSide] | None = None
    check: Callable[[Config], None] = _nothing
    simulation_setup: Callable[[Config], None] = _nothing
    federated: bool = True
    run: Callable[[Config, int], Path] | None = None
    objectives: tuple[str, ...] = field(default=("sft", "dpo"))
    client_hooks: bool = False
    #: (model, tokenizer) of a finished run folder's final model (``fedtune generate``/``export``)
    load_result: Callable[[Path], tuple[Any, Any]] | None = None
    #: the method config sections it reads (``lora``, ``zo``, ...; :data:`fedtune.config.SECTIONS`):
    #: another algorithm refuses a key of them set to a non-default value
    sections: tuple[str, ...] = ()
