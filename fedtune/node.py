"""A client node's identity and its private data, shared by every algorithm's client."""

from __future__ import annotations

import functools
from dataclasses import astuple, dataclass

from fedtune.config import Config, DataConfig
from fedtune.data import client_split, own_file_split
from fedtune.data.pairs import PairSet, encode_pairs
from fedtune.data.tokenize import EncodedSet, encode_examples
from fedtune.models import load_tokenizer


@dataclass(frozen=True)
class Node:
    """Who this client is: a stable name and its data partition (never Flower's node id)."""

    name: str
    partition_id: int
    num_partitions: int
    data_path: str = ""  # deployment: the node's own data file, read instead of a partition


@functools.lru_cache(maxsize=64)
def _encoded(data_key: tuple, node: Node, seed: int, held_out: bool, model: str,
             max_len: int) -> EncodedSet:
    data = DataConfig(*data_key)
    if node.data_path:
        examples = own_file_split(node.data_path, data.data_fields, seed, held_out)
    else:
        examples = client_split(data, node.partition_id, node.num_partitions, seed, held_out)
    return encode_examples(load_tokenizer(model), examples, max_len)


def node_data(cfg: Config, node: Node, held_out: bool = False) -> EncodedSet:
    """This node's tokenized examples, cached for the life of the process."""
    return _encoded(astuple(cfg.data), node, cfg.server.seed, held_out, cfg.model.model,
                    cfg.model.max_seq_len)


@functools.lru_cache(maxsize=64)
def _encoded_pairs(data_key: tuple, node: Node, seed: int, held_out: bool, model: str,
                   max_len: int) -> PairSet:
    from fedtune.data.preference import client_pairs, own_file_pairs

    data = DataConfig(*data_key)
    if node.data_path:
        pairs = own_file_pairs(node.data_path, data.data_fields, seed, held_out)
    else:
        pairs = client_pairs(data, node.partition_id, node.num_partitions, seed, held_out)
    return encode_pairs(load_tokenizer(model), pairs, max_len)


def node_pairs(cfg: Config, node: Node, held_out: bool = False) -> PairSet:
    """This node's tokenized preference pairs (objective=dpo), cached for the process."""
    return _encoded_pairs(astuple(cfg.data), node, cfg.server.seed, held_out, cfg.model.model,
                          cfg.model.max_seq_len)
