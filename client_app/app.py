"""ClientApp: one handler per message type; the work itself lives in ``fedtune.fedit.client``."""

from __future__ import annotations

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedtune.config import Config
from fedtune.fedit import client as fedit
from fedtune.flower.records import from_arrayrecord, to_arrayrecord
from fedtune.logs import quiet_third_party
from fedtune.lora import WIRE_DTYPE

quiet_third_party()
app = ClientApp()


def _node(context: Context) -> fedit.Node:
    """The node's stable identity: its partition in simulation, its node-name in deployment."""
    nc = context.node_config
    pid = int(nc.get("partition-id", 0))
    name = str(nc.get("node-name") or f"client-{pid:04d}")
    return fedit.Node(name=name, partition_id=pid, num_partitions=int(nc.get("num-partitions", 1)))


@app.query("identify")
def identify(msg: Message, context: Context) -> Message:
    return Message(RecordDict({"node": ConfigRecord({"name": _node(context).name})}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    cfg = Config.from_flat(dict(context.run_config))
    conf = msg.content["config"]
    result = fedit.train(cfg, from_arrayrecord(msg.content["arrays"]),
                         server_round=int(conf["server-round"]), lr=float(conf["lr"]),
                         node=_node(context))
    metrics = MetricRecord({"num-examples": result.num_examples, **result.metrics})
    content = RecordDict({"arrays": to_arrayrecord(result.arrays, WIRE_DTYPE), "metrics": metrics})
    return Message(content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    cfg = Config.from_flat(dict(context.run_config))
    loss, n = fedit.evaluate(cfg, from_arrayrecord(msg.content["arrays"]), _node(context))
    return Message(RecordDict({"metrics": MetricRecord({"eval-loss": loss, "num-examples": n})}),
                   reply_to=msg)
