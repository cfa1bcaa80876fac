"""A client node's identity and its private data, shared by every algorithm's client."""

from __future__ import annotations

import functools
import hashlib
from dataclasses import astuple, dataclass, replace

from fedtune.config import Config
from fedtune.data.config import DataConfig
from fedtune.data.pairs import PairSet, encode_pairs
from fedtune.data.records import RecordType
from fedtune.data.split import EXAMPLES, PAIRS, split
from fedtune.data.tokenize import EncodedSet, encode_examples
from fedtune.models.loading import load_tokenizer


@dataclass(frozen=True)
class Node:
    """Who this client is: a stable name and its data partition (never Flower's node id)."""

    name: str
    partition_id: int
    num_partitions: int
    # deployment: the node's own data file, read instead of a partition ("": its partition; a
    # deployed node without data-path is refused by the ClientApp unless data-path='builtin')
    data_path: str = ""
    lora_r: int = 0  # its LoRA rank from its node config (0: the run's lora-ranks / lora-r)


@functools.lru_cache(maxsize=128)
def _encoded(records: RecordType, data_key: tuple, node: Node, seed: int, held_out: bool,
             model: str, max_len: int) -> EncodedSet | PairSet:
    mine = split(DataConfig(*data_key), records, "held-out" if held_out else "train", seed,
                 node.partition_id, node.num_partitions, node.data_path)
    encode = encode_pairs if records is PAIRS else encode_examples
    return encode(load_tokenizer(model), mine, max_len)


def node_data(cfg: Config, node: Node, held_out: bool = False) -> EncodedSet:
    """This node's tokenized examples, cached for the life of the process."""
    return _encoded(EXAMPLES, astuple(cfg.data), node, cfg.server.seed, held_out,
                    cfg.model.model, cfg.model.max_seq_len)


def node_pairs(cfg: Config, node: Node, held_out: bool = False) -> PairSet:
    """This node's tokenized preference pairs (objective=dpo), cached for the process."""
    return _encoded(PAIRS, astuple(cfg.data), node, cfg.server.seed, held_out,
                    cfg.model.model, cfg.model.max_seq_len)


def data_report(cfg: Config, node: Node) -> dict[str, str | list[str]]:
    """What a deployed node trained on, for the server's ``clients.jsonl``: the SHA-256 of its
    ``data-path`` file and the sorted values of the file's own ``category`` field on its
    training side (``[]`` without one). Read without the run's ``data-fields``, which the caller
    of a run chooses: mapped to another field, the labels would be record text."""
    digest = hashlib.sha256()
    with open(node.data_path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    records = PAIRS if cfg.train.objective == "dpo" else EXAMPLES
    try:
        mine = split(replace(cfg.data, data_fields=""), records, "train", cfg.server.seed,
                     own_file=node.data_path)
    except ValueError:  # its layout needs data-fields: no label to report
        mine = []
    categories = sorted({c for c in records.labels(mine, "category") if c})
    return {"sha256": digest.hexdigest(), "categories": categories}
