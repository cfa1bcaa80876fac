"""A node's side of a round: Flower records in, the algorithm's client side, records out.

The ClientApp translates Flower's ``Context`` (run config, node config, node state) into the
arguments here; this module finds the algorithm in the registry and converts the records.
"""

from __future__ import annotations

import os

from flwr.app import RecordDict

from fedtune.algorithms import resolve
from fedtune.checkpoint import config_fingerprint
from fedtune.config import Config
from fedtune.flower import snapshots
from fedtune.flower.secure import SECAGG, clip_bound, masked_reply
from fedtune.node import Node, data_report
from fedtune.payloads import payload_of
from fedtune.privacy.payloads import clip_reply, reference_of
from fedtune.seeding import deterministic_cuda
from fedtune.strategies import client_hook
from fedtune.wire.flower import from_arrayrecord, to_arrayrecord, to_recorddict, to_records

DATA_REPORT = "data"  # a deployed node's train reply: fedtune.node.data_report


def _kept(state: RecordDict) -> dict:
    return {name: from_arrayrecord(rec) for name, rec in state.array_records.items()}


def _persist(kept: dict, before: dict[str, int], state: RecordDict) -> None:
    for name, arrays in kept.items():
        if before.get(name) != id(arrays):  # new or replaced: persist it for the next round
            state[name] = to_arrayrecord(arrays)


def _snapshot_dir(cfg: Config) -> str:
    """``node-state-dir``/<config fingerprint>: a run and its resumption share it, a run with
    another config never reads it."""
    if not cfg.output.node_state_dir:
        return ""
    return os.path.join(cfg.output.node_state_dir, config_fingerprint(cfg.to_flat()))


def train(cfg: Config, node: Node, content: RecordDict, state: RecordDict) -> RecordDict:
    """One local round; ``state`` (the node's ``Context.state``) keeps arrays between rounds,
    mirrored to ``node-state-dir`` when set (:mod:`fedtune.flower.snapshots`)."""
    algo = resolve(cfg)
    deterministic_cuda(cfg.model.deterministic, cfg.model.device)  # before any CUDA work
    received = to_records(content)
    server_round = int(received.configs.get("config", {}).get("server-round", 0))
    kept = _kept(state)
    before = {name: id(arrays) for name, arrays in kept.items()}
    folder = _snapshot_dir(cfg)
    if not kept and folder:  # a resumed run: this node's last snapshot
        kept = snapshots.load(folder, node.name, server_round)
    side = algo.client(cfg, client_hook(cfg, algo.payload)) if algo.client_hooks else \
        algo.client(cfg)
    reply = side.train(received, node, kept)
    _persist(kept, before, state)
    if kept and folder:
        snapshots.save(folder, node.name, server_round, kept)
    payload, reference = payload_of(side), reference_of(received)  # as the server's
    if cfg.privacy.dp == "client":  # clipped here: the server never sees more than C
        reply = clip_reply(payload, reply, reference,
                           clip_bound(cfg, payload, reference, received))
    if SECAGG in content.config_records:  # only the masked vector leaves the node
        return masked_reply(cfg, payload, reference, reply, received, node, state)
    # deployed: which file it trained on (its hash, its category labels); never under DP
    if node.data_path and not cfg.privacy.enabled:
        reply.configs[DATA_REPORT] = data_report(cfg, node)
    return to_recorddict(reply)


def evaluate(cfg: Config, node: Node, content: RecordDict, state: RecordDict) -> RecordDict:
    """The node's evaluation of the global model on its own held-out data (a personalised
    method reads the parts it keeps in ``state``; an evaluation changes none of them)."""
    deterministic_cuda(cfg.model.deterministic, cfg.model.device)
    received = to_records(content)
    kept = _kept(state)
    folder = _snapshot_dir(cfg)
    if not kept and folder:
        server_round = int(received.configs.get("config", {}).get("server-round", 0))
        kept = snapshots.load(folder, node.name, server_round + 1)
    return to_recorddict(resolve(cfg).client(cfg).evaluate(received, node, kept))
