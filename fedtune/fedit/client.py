"""A FedIT client's work: load the global adapter, run a local round or an evaluation."""

from __future__ import annotations

import functools
from dataclasses import astuple, dataclass

import numpy as np

from fedtune.config import Config, DataConfig
from fedtune.data import client_split
from fedtune.data.tokenize import EncodedSet, encode_examples
from fedtune.eval import heldout_loss
from fedtune.fedit.model import peft_model_for
from fedtune.lora import adapter_state, load_adapter_state
from fedtune.models import load_tokenizer
from fedtune.train.sft import SFTSettings, train_round


@dataclass(frozen=True)
class Node:
    """Who this client is: a stable name and its data partition (never Flower's node id)."""

    name: str
    partition_id: int
    num_partitions: int


@dataclass
class TrainResult:
    arrays: dict[str, np.ndarray]
    num_examples: int
    metrics: dict[str, float]


@functools.lru_cache(maxsize=64)
def _encoded(data_key: tuple, node: Node, seed: int, held_out: bool, model: str,
             max_len: int) -> EncodedSet:
    examples = client_split(DataConfig(*data_key), node.partition_id, node.num_partitions, seed,
                            held_out)
    return encode_examples(load_tokenizer(model), examples, max_len)


def node_data(cfg: Config, node: Node, held_out: bool = False) -> EncodedSet:
    """This node's tokenized examples, cached for the life of the process."""
    return _encoded(astuple(cfg.data), node, cfg.server.seed, held_out, cfg.model.model,
                    cfg.model.max_seq_len)


def train(cfg: Config, arrays: dict[str, np.ndarray], server_round: int, lr: float,
          node: Node) -> TrainResult:
    """One local SFT round from the global adapter ``arrays``."""
    model, tokenizer = peft_model_for(cfg)
    load_adapter_state(model, arrays)
    data = node_data(cfg, node)
    t = cfg.train
    stats = train_round(
        model, data,
        SFTSettings(steps=t.local_steps, batch_size=t.batch_size, lr=lr, grad_accum=t.grad_accum,
                    weight_decay=t.weight_decay, max_grad_norm=t.max_grad_norm,
                    gradient_checkpointing=cfg.model.gradient_checkpointing),
        pad_id=tokenizer.pad_token_id,
        seed_parts=(cfg.server.seed, server_round, node.name),
    )
    return TrainResult(
        arrays=adapter_state(model),
        num_examples=len(data),
        metrics={"train-loss": stats.train_loss, "dropped-examples": data.dropped,
                 "tokens": stats.tokens, "train-seconds": stats.seconds},
    )


def evaluate(cfg: Config, arrays: dict[str, np.ndarray], node: Node) -> tuple[float, int]:
    """Held-out loss of the global adapter on this client's own held-out examples."""
    model, tokenizer = peft_model_for(cfg)
    load_adapter_state(model, arrays)
    data = node_data(cfg, node, held_out=True)
    return heldout_loss(model, data, tokenizer.pad_token_id, cfg.eval.eval_batch_size), len(data)
