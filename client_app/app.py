"""ClientApp: one handler per message type; the work itself lives in the library
(``fedtune.fedit.client`` for LoRA, ``fedtune.fedkseed.client`` for zeroth-order).

A deployed ClientApp is a new process per message, so torch and transformers are imported by
the handlers that need them: the ``identify`` message answers in well under a second instead of
paying about 5 s of imports.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedtune.config import ZO_ALGORITHMS, Config
from fedtune.flower.records import from_arrayrecord, to_arrayrecord
from fedtune.logs import quiet_third_party

if TYPE_CHECKING:
    from fedtune.node import Node

CONTROL = "scaffold"  # record name of SCAFFOLD control variates (c down, c_i+ - c_i up)

quiet_third_party()
app = ClientApp()


def _name(context: Context) -> str:
    """Its ``node-name`` in deployment, else its partition in simulation (never Flower's id)."""
    nc = context.node_config
    return str(nc.get("node-name") or f"client-{int(nc.get('partition-id', 0)):04d}")


def _node(context: Context) -> Node:
    """The node's stable identity and data: its partition in simulation; in deployment its
    ``node-name`` and its own file, ``--node-config "node-name='a' data-path='a.jsonl'"``."""
    from fedtune.node import Node

    nc = context.node_config
    return Node(name=_name(context), partition_id=int(nc.get("partition-id", 0)),
                num_partitions=int(nc.get("num-partitions", 1)),
                data_path=str(nc.get("data-path", "")))


def _config(context: Context) -> Config:
    """The run's config; a node's ``--node-config "cache-dir='...'"`` becomes its FedKSeed
    version cache. A deployed ClientApp is a new process per message: with the cache, the
    evaluate message (and any later message of the same version) loads the model that the train
    message replayed instead of replaying it again."""
    cfg = Config.from_flat(dict(context.run_config))
    cache = context.node_config.get("cache-dir")
    if cache:
        cfg.zo.zo_cache_dir = str(cache)
    return cfg


def _reply(msg: Message, **records) -> Message:
    return Message(RecordDict(records), reply_to=msg)


@app.query("identify")
def identify(msg: Message, context: Context) -> Message:
    return _reply(msg, node=ConfigRecord({"name": _name(context)}))


@app.train()
def train(msg: Message, context: Context) -> Message:
    cfg = _config(context)
    conf = msg.content["config"]
    rnd = int(conf["server-round"])
    if cfg.train.algorithm in ZO_ALGORITHMS:
        from fedtune.fedkseed import client as fedkseed
        from fedtune.zo import pack_pairs

        importance = conf.get("importance")
        res = fedkseed.train(cfg, msg.content["arrays"]["accumulated"].numpy(), rnd,
                             _node(context), fingerprint=int(conf["pool"]),
                             importance=importance if isinstance(importance, bytes) else None)
        pairs = pack_pairs(res.seed_indices, res.scalars, cfg.zo.zo_seeds)
        return _reply(msg, zo=ConfigRecord({"pairs": pairs}),
                      metrics=MetricRecord({"num-examples": res.num_examples, **res.metrics}))
    from fedtune.fedit import client as fedit
    from fedtune.lora import WIRE_DTYPE

    arrays = from_arrayrecord(msg.content["arrays"])
    control = None
    if CONTROL in msg.content.array_records:  # SCAFFOLD: c from the server, c_i kept here
        c = from_arrayrecord(msg.content[CONTROL])
        mine = context.state.array_records.get(CONTROL)
        c_i = from_arrayrecord(mine) if mine is not None else {
            k: np.zeros_like(v) for k, v in c.items()}
        control = (c, c_i)
    result = fedit.train(cfg, arrays, server_round=rnd, lr=float(conf["lr"]),
                         node=_node(context), prox_mu=float(conf.get("proximal-mu", 0.0)),
                         control=control)
    records = {"arrays": to_arrayrecord(result.arrays, WIRE_DTYPE),
               "metrics": MetricRecord({"num-examples": result.num_examples, **result.metrics})}
    if result.control is not None:
        c_new, delta = result.control
        context.state[CONTROL] = to_arrayrecord(c_new)  # persists per node between rounds
        records[CONTROL] = to_arrayrecord(delta)
    return _reply(msg, **records)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    cfg = _config(context)
    if cfg.train.algorithm in ZO_ALGORITHMS:
        from fedtune.fedkseed import client as fedkseed

        loss, n = fedkseed.evaluate(cfg, msg.content["arrays"]["accumulated"].numpy(),
                                    _node(context))
    else:
        from fedtune.fedit import client as fedit

        loss, n = fedit.evaluate(cfg, from_arrayrecord(msg.content["arrays"]), _node(context))
    return _reply(msg, metrics=MetricRecord({"eval-loss": loss, "num-examples": n}))
