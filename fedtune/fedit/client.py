"""A FedIT client's work: load the global adapter, run a local round or an evaluation."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch

from fedtune.config import Config
from fedtune.data.pairs import PairSet
from fedtune.data.tokenize import EncodedSet
from fedtune.eval import heldout_loss
from fedtune.eval.preference import preference_metrics
from fedtune.fedit.dpo import dpo_settings, reference_logps
from fedtune.fedit.model import peft_model_for
from fedtune.lora import adapter_state, load_adapter_state, trainable_keys
from fedtune.node import Node, node_data, node_pairs
from fedtune.train.dpo import DPOStats, batch_loss_fn, dropout_off
from fedtune.train.sft import SFTSettings, train_round


@dataclass
class TrainResult:
    arrays: dict[str, np.ndarray]
    num_examples: int
    metrics: dict[str, float]
    # SCAFFOLD: (the client's new control variate c_i+, its change c_i+ - c_i)
    control: tuple[dict[str, np.ndarray], dict[str, np.ndarray]] | None = None


def train(cfg: Config, arrays: dict[str, np.ndarray], server_round: int, lr: float,
          node: Node, data: EncodedSet | PairSet | None = None, steps: int | None = None,
          prox_mu: float = 0.0,
          control: tuple[dict[str, np.ndarray], dict[str, np.ndarray]] | None = None
          ) -> TrainResult:
    """One local SFT (or, for objective=dpo, DPO) round from the global adapter ``arrays`` on
    the node's data (or ``data``), for ``local-steps`` optimizer steps (or ``steps``).

    ``control`` = (c, c_i), the server's and this client's SCAFFOLD control variates: every
    gradient is corrected by c - c_i, and the result carries c_i+ = c_i - c + (x - y)/(K lr)
    (option II of the paper, with K local steps at learning rate lr).
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
    if control is not None:
        c, c_i = control
        ref = next(p for p in model.parameters() if p.requires_grad)
        correction = [torch.from_numpy(c[k] - c_i[k]).to(ref.device, ref.dtype)
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
    y = adapter_state(model)
    new_control = None
    if control is not None:
        c, c_i = control
        scale = 1.0 / (stats.steps * lr)
        c_new = {k: (c_i[k] - c[k] + (arrays[k] - y[k]) * scale).astype(np.float32) for k in y}
        new_control = (c_new, {k: c_new[k] - c_i[k] for k in y})
    return TrainResult(
        arrays=y,
        num_examples=len(data),
        metrics={"train-loss": stats.train_loss, "dropped-examples": data.dropped,
                 "tokens": stats.tokens, "train-seconds": stats.seconds,
                 **(dpo_stats.metrics() if dpo_stats is not None else {})},
        control=new_control,
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
