"""ClientApp: one handler per message type; the algorithm's client side (found in
``fedtune.algorithms``' registry) does the work.

A deployed ClientApp is a new process per message, so torch and transformers are imported by
the handlers that need them: the ``identify`` message answers in well under a second instead of
paying about 5 s of imports.

A deployed node (one the simulation engine gave no ``partition-id``) without ``data-path`` in its
node config refuses every message with one sentence naming the missing setting, instead of
training on the built-in synthetic data; ``data-path='builtin'`` asks for that data on purpose.

A node's pins (``--node-config "require-dp=true max-epsilon=8.0 require-secagg=true
min-train-nodes=3"``, :mod:`fedtune.node_pins`) are checked against the run config before any
handler does its work: a run that does not meet them gets an error reply to every message, so
the node never identifies itself to it (it is never sampled) and never trains for it.
"""

from __future__ import annotations

import sys
import threading
from typing import TYPE_CHECKING

from flwr.app import ConfigRecord, Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode

from fedtune.config import Config
from fedtune.logs import quiet_third_party
from fedtune.node_pins import refusal as pin_refusal

if TYPE_CHECKING:
    from fedtune.node import Node

quiet_third_party()
app = ClientApp()
BUILTIN_DATA = "builtin"  # data-path='builtin': the built-in synthetic data, on purpose
_warming: threading.Thread | None = None  # see _warm_up
# False where a ServerApp shares this process (tests/inprocess_grid.py): the warm-up's imports
# would run beside the server's, and transformers' lazy imports are not thread-safe (the
# server's `from transformers import LlamaForCausalLM` failed with an ImportError)
WARM_UP = True


def _warm_up(context: Context) -> None:
    """In the simulation engine an actor is a long-lived process: after it answers
    ``identify`` it imports torch, transformers, peft and the client code (about 5 CPU-s) and
    loads the tokenizer in the background, while the server evaluates round 0, instead of in
    the first train message. A deployed ClientApp (a process per message) does not."""
    global _warming
    if not WARM_UP or _warming is not None or "partition-id" not in context.node_config:
        return

    def work() -> None:
        try:
            import peft  # noqa: F401
            import torch  # noqa: F401

            from fedtune.flower import client  # noqa: F401
            from fedtune.models.loading import load_tokenizer

            load_tokenizer(_config(context).model.model)
        except Exception:  # the message that needs it will raise it, with its own context
            pass

    _warming = threading.Thread(target=work, name="fedtune-warm-up", daemon=True)
    _warming.start()


def _warmed() -> None:
    """Wait for the warm-up, if any: a handler never imports alongside it."""
    if _warming is not None:
        _warming.join()


def _name(context: Context) -> str:
    """Its ``node-name`` in deployment, else its partition in simulation (never Flower's id)."""
    nc = context.node_config
    return str(nc.get("node-name") or f"client-{int(nc.get('partition-id', 0)):04d}")


def _node(context: Context) -> Node:
    """The node's stable identity and data: its partition in simulation; in deployment its
    ``node-name`` and its own file, ``--node-config "node-name='a' data-path='a.jsonl'"``
    (and, for FedIT with mixed ranks, its ``lora-r``)."""
    from fedtune.node import Node

    nc = context.node_config
    return Node(name=_name(context), partition_id=int(nc.get("partition-id", 0)),
                num_partitions=int(nc.get("num-partitions", 1)),
                data_path=_data_path(context), lora_r=int(nc.get("lora-r", 0)))


def _data_path(context: Context) -> str:
    """The node's own data file; "" for its partition (or the built-in data on purpose)."""
    path = str(context.node_config.get("data-path", ""))
    return "" if path == BUILTIN_DATA else path


def _refusal(msg: Message, context: Context, data: bool = True) -> Message | None:
    """An error reply when this node refuses the message (else None): the run does not meet
    the node's pins, or (``data``) the node is deployed without data. One sentence, on the
    server's log (the round loop names the node) and on the node's stderr."""
    reason = pin_refusal(_name(context), context.node_config, context.run_config)
    if reason is None and data:
        reason = _no_data(context)
    if reason is None:
        return None
    print(f"fedtune: {reason}", file=sys.stderr, flush=True)
    return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason),
                   reply_to=msg)


def _no_data(context: Context) -> str | None:
    """Why a deployed node without ``data-path`` takes no part (else None)."""
    nc = context.node_config
    if "partition-id" in nc or str(nc.get("data-path", "")):
        return None
    return (f"node '{_name(context)}' has no data: start its SuperNode with --node-config "
            f"\"data-path='<its data file>'\" (or data-path='{BUILTIN_DATA}' for fedtune's "
            "built-in synthetic data)")


def _config(context: Context) -> Config:
    """The run's config; a node's ``--node-config "cache-dir='...'"`` becomes its FedKSeed
    version cache, its ``state-dir`` the folder of its state snapshots (for resumed runs). A
    deployed ClientApp is a new process per message: with the cache, the evaluate message (and
    any later message of the same version) loads the model that the train message replayed
    instead of replaying it again."""
    cfg = Config.from_flat(dict(context.run_config))
    cache = context.node_config.get("cache-dir")
    if cache:
        cfg.output.cache_dir = str(cache)
    state_dir = context.node_config.get("state-dir")
    if state_dir:
        cfg.output.node_state_dir = str(state_dir)
    return cfg


@app.query("identify")
def identify(msg: Message, context: Context) -> Message:
    refused = _refusal(msg, context)
    if refused is not None:
        return refused
    _warm_up(context)
    return Message(RecordDict({"node": ConfigRecord({"name": _name(context)})}), reply_to=msg)


@app.query("secagg")
def secagg(msg: Message, context: Context) -> Message:
    """A stage of secure aggregation (keys, shares, unmasking); no model is loaded."""
    refused = _refusal(msg, context, data=False)
    if refused is not None:
        return refused
    _warmed()
    from fedtune.flower import secure

    return Message(secure.stage(msg.content, context.state, context.run_id), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    refused = _refusal(msg, context)
    if refused is not None:
        return refused
    _warmed()
    from fedtune.flower import client

    content = client.train(_config(context), _node(context), msg.content, context.state)
    return Message(content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    refused = _refusal(msg, context)
    if refused is not None:
        return refused
    _warmed()
    from fedtune.flower import client

    content = client.evaluate(_config(context), _node(context), msg.content, context.state)
    return Message(content, reply_to=msg)
