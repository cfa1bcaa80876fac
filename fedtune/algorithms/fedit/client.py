"""A FedIT client's work: load the global adapter, run a local round or an evaluation.

:class:`FedITClient` is the algorithm's client side on the wire (records in, records out);
:func:`train` and :func:`evaluate` are the plain-Python rounds the baselines share.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch

from fedtune.algorithms.base import NodeState
from fedtune.algorithms.fedit.adapter import (
    WIRE_DTYPE,
    adapter_state,
    load_adapter_state,
    trainable_keys,
)
from fedtune.algorithms.fedit.dpo import dpo_settings, reference_logps
from fedtune.algorithms.fedit.model import peft_model_for
from fedtune.algorithms.replies import NUM_EXAMPLES, Records
from fedtune.config import Config
from fedtune.data.pairs import PairSet
from fedtune.data.tokenize import EncodedSet
from fedtune.eval.loss import heldout_loss
from fedtune.eval.preference import preference_metrics
from fedtune.node import Node, node_data, node_pairs
from fedtune.strategies import client_hook
from fedtune.train.dpo import DPOStats, batch_loss_fn, dropout_off
from fedtune.train.sft import SFTSettings, train_round


@dataclass
class TrainResult:
    arrays: dict[str, np.ndarray]
    num_examples: int
    metrics: dict[str, float]
    steps: int  # optimizer steps taken


def train(cfg: Config, arrays: dict[str, np.ndarray], server_round: int, lr: float,
          node: Node, data: EncodedSet | PairSet | None = None, steps: int | None = None,
          prox_mu: float = 0.0, grad_correction: dict[str, np.ndarray] | None = None
          ) -> TrainResult:
    """One local SFT (or, for objective=dpo, DPO) round from the global adapter ``arrays`` on
    the node's data (or ``data``), for ``local-steps`` optimizer steps (or ``steps``).

    ``prox_mu`` adds FedProx's proximal term; ``grad_correction`` (adapter key -> array) is
    added to every gradient (SCAFFOLD's c - c_i).
    """
    model, tokenizer = peft_model_for(cfg)
    batch_loss, dpo_stats = None, None
    if cfg.train.objective == "dpo":  # the reference first: computing it swaps the adapter
        data = node_pairs(cfg, node) if data is None else data
        reference = reference_logps(cfg, model, data, tokenizer.pad_token_id)
        dpo_stats = DPOStats()
        batch_loss = batch_loss_fn(model, data, reference, dpo_settings(cfg),
                                   tokenizer.pad_token_id, dpo_stats)
    load_adapter_state(model, arrays)
    data = node_data(cfg, node) if data is None else data
    t = cfg.train
    correction = None
    if grad_correction is not None:
        ref = next(p for p in model.parameters() if p.requires_grad)
        correction = [torch.from_numpy(grad_correction[k]).to(ref.device, ref.dtype)
                      for k in trainable_keys(model)]
    settings = SFTSettings(steps=steps or t.local_steps, batch_size=t.batch_size, lr=lr,
                           grad_accum=t.grad_accum, weight_decay=t.weight_decay,
                           max_grad_norm=t.max_grad_norm, prox_mu=prox_mu,
                           grad_correction=correction,
                           gradient_checkpointing=cfg.model.gradient_checkpointing)
    # DPO: the policy's log-probs without dropout, as the reference's are (TRL's default)
    with dropout_off(model) if batch_loss is not None else contextlib.nullcontext():
        stats = train_round(model, data, settings, pad_id=tokenizer.pad_token_id,
                            seed_parts=(cfg.server.seed, server_round, node.name),
                            batch_loss=batch_loss)
    return TrainResult(
        arrays=adapter_state(model),
        num_examples=len(data),
        metrics={"train-loss": stats.train_loss, "dropped-examples": data.dropped,
                 "tokens": stats.tokens, "train-seconds": stats.seconds,
                 **(dpo_stats.metrics() if dpo_stats is not None else {})},
        steps=stats.steps,
    )


def evaluate(cfg: Config, arrays: dict[str, np.ndarray], node: Node) -> tuple[float, int]:
    """Held-out loss (DPO loss for objective=dpo) of the global adapter on this client's own
    held-out examples."""
    model, tokenizer = peft_model_for(cfg)
    if cfg.train.objective == "dpo":
        pairs = node_pairs(cfg, node, held_out=True)
        reference = reference_logps(cfg, model, pairs, tokenizer.pad_token_id)
        load_adapter_state(model, arrays)
        metrics = preference_metrics(model, pairs, reference, dpo_settings(cfg),
                                     tokenizer.pad_token_id, cfg.eval.eval_batch_size)
        return metrics["eval_loss"], len(pairs)
    load_adapter_state(model, arrays)
    data = node_data(cfg, node, held_out=True)
    return heldout_loss(model, data, tokenizer.pad_token_id, cfg.eval.eval_batch_size), len(data)


class FedITClient:
    """FedIT's client side: records ``arrays`` (the global adapter) and ``config`` (``lr``,
    ``server-round``, FedProx's ``proximal-mu``) in; the adapter in 16 bits and the round's
    metrics out. A strategy's client hook (SCAFFOLD) adds its records around the round."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg

    def train(self, content: Records, node: Node, state: NodeState) -> Records:
        conf = content.configs["config"]
        x = {k: v.astype(np.float32, copy=False) for k, v in content.arrays["arrays"].items()}
        hook = client_hook(self.cfg, "arrays")
        correction = hook.before_train(content, state) if hook is not None else None
        lr = float(conf["lr"])
        result = train(self.cfg, x, server_round=int(conf["server-round"]), lr=lr, node=node,
                       prox_mu=float(conf.get("proximal-mu", 0.0)), grad_correction=correction)
        reply = Records(
            arrays={"arrays": {k: v.astype(WIRE_DTYPE) for k, v in result.arrays.items()}},
            metrics={"metrics": {NUM_EXAMPLES: result.num_examples, **result.metrics}})
        if hook is not None:
            hook.after_train(x, result.arrays, result.steps, lr, state, reply)
        return reply

    def evaluate(self, content: Records, node: Node) -> Records:
        x = {k: v.astype(np.float32, copy=False) for k, v in content.arrays["arrays"].items()}
        loss, n = evaluate(self.cfg, x, node)
        return Records(metrics={"metrics": {"eval-loss": loss, NUM_EXAMPLES: n}})
