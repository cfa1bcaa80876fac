"""Data: examples, prompt template, tokenization with label masking, built-in tasks, readers."""

from __future__ import annotations

from fedtune.config import DataConfig
from fedtune.data import synthetic
from fedtune.data.example import Example
from fedtune.data.files import read_examples
from fedtune.data.partition import iid_partition

BUILTIN = "builtin"

__all__ = ["Example", "client_split", "eval_split"]


def client_split(cfg: DataConfig, partition_id: int, num_partitions: int, seed: int,
                 held_out: bool = False) -> list[Example]:
    """This client's private examples (training side, or its own held-out side)."""
    if cfg.data == BUILTIN:
        n = cfg.client_eval_examples if held_out else cfg.examples_per_client
        return synthetic.client_examples(partition_id, num_partitions, n, seed, held_out)
    examples = iid_partition(_train_pool(cfg, seed), num_partitions, seed)[partition_id]
    cut = max(1, len(examples) // 10)  # a client's own held-out tenth for federated evaluation
    return examples[:cut] if held_out else examples[cut:]


def eval_split(cfg: DataConfig, seed: int) -> list[Example]:
    """The centralized held-out set (server side)."""
    if cfg.data == BUILTIN:
        return synthetic.eval_examples(cfg.eval_examples, seed)
    if cfg.eval_data:
        return read_examples(cfg.eval_data)[: cfg.eval_examples]
    return _shuffled(cfg.data, seed)[: _global_cut(cfg)]


def _shuffled(path: str, seed: int) -> list[Example]:
    return iid_partition(read_examples(path), 1, seed)[0]


def _global_cut(cfg: DataConfig) -> int:
    """Without ``eval-data``, the first ``eval-examples`` of the seeded shuffle are held out
    from every client; the rest is the clients' pool."""
    return 0 if cfg.eval_data else cfg.eval_examples


def _train_pool(cfg: DataConfig, seed: int) -> list[Example]:
    return _shuffled(cfg.data, seed)[_global_cut(cfg):]
