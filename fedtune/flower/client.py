"""A node's side of a round: Flower records in, the algorithm's client side, records out.

The ClientApp translates Flower's ``Context`` (run config, node config, node state) into the
arguments here; this module finds the algorithm in the registry and converts the records.
"""

from __future__ import annotations

from flwr.app import RecordDict

from fedtune.algorithms import resolve
from fedtune.config import Config
from fedtune.flower.records import from_arrayrecord, to_arrayrecord, to_recorddict, to_records
from fedtune.flower.secure import SECAGG, masked_reply
from fedtune.node import Node
from fedtune.privacy.payloads import clip_reply


def train(cfg: Config, node: Node, content: RecordDict, state: RecordDict) -> RecordDict:
    """One local round; ``state`` (the node's ``Context.state``) keeps arrays between rounds."""
    algo = resolve(cfg)
    kept = {name: from_arrayrecord(rec) for name, rec in state.array_records.items()}
    before = {name: id(arrays) for name, arrays in kept.items()}
    received = to_records(content)
    reply = algo.client(cfg).train(received, node, kept)
    if cfg.privacy.dp == "client":  # clipped here: the server never sees more than C
        reply = clip_reply(algo.payload, reply, received,
                           cfg.privacy.clip_norm_for(algo.payload), cfg.zo.zo_seeds)
    if SECAGG in content.config_records:  # only the masked vector leaves the node
        return masked_reply(cfg, algo.payload, reply, received, node, state)
    for name, arrays in kept.items():
        if before.get(name) != id(arrays):  # new or replaced: persist it for the next round
            state[name] = to_arrayrecord(arrays)
    return to_recorddict(reply)


def evaluate(cfg: Config, node: Node, content: RecordDict) -> RecordDict:
    """The node's evaluation of the global model on its own held-out data."""
    return to_recorddict(resolve(cfg).client(cfg).evaluate(to_records(content), node))
