"""Data: examples, formats and readers, prompt template, tokenization with label masking,
partitioners, Natural Instructions preprocessing, the built-in synthetic tasks."""

from __future__ import annotations

from fedtune.config import DataConfig
from fedtune.data import synthetic
from fedtune.data.example import Example
from fedtune.data.files import read_examples
from fedtune.data.partition import iid_partition
from fedtune.data.sources import client_examples, eval_examples

BUILTIN = "builtin"

__all__ = ["Example", "client_split", "eval_split"]


def client_split(cfg: DataConfig, partition_id: int, num_partitions: int, seed: int,
                 held_out: bool = False) -> list[Example]:
    """This client's private examples (training side, or its own held-out side).

    File data: the client's partition (see :mod:`fedtune.data.sources`), of which the first
    tenth (at least one example) is its held-out side for federated evaluation.
    """
    if cfg.data == BUILTIN:
        n = cfg.client_eval_examples if held_out else cfg.examples_per_client
        return synthetic.client_examples(partition_id, num_partitions, n, seed, held_out)
    examples = client_examples(cfg, partition_id, num_partitions, seed)
    cut = max(1, len(examples) // 10)
    return examples[:cut] if held_out else examples[cut:]


def own_file_split(path: str, fields: str, seed: int, held_out: bool = False) -> list[Example]:
    """Deployment: a node's own data file (``--node-config "data-path='...'"``), shuffled with
    the run seed; the first tenth (at least one example) is its held-out side."""
    examples = iid_partition(read_examples(path, fields), 1, seed)[0]
    cut = max(1, len(examples) // 10)
    return examples[:cut] if held_out else examples[cut:]


def eval_split(cfg: DataConfig, seed: int) -> list[Example]:
    """The centralized held-out set (server side); never on any client."""
    if cfg.data == BUILTIN and not cfg.eval_data:  # deployment: nodes bring data, eval-data set
        return synthetic.eval_examples(cfg.eval_examples, seed)
    return eval_examples(cfg, seed)
