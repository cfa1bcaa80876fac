"""A FedIT client's work: load the global adapter, run a local round or an evaluation.

:class:`FedITClient` is the algorithm's client side on the wire (records in, records out), for
every ``lora-aggregation`` variant (:mod:`~fedtune.algorithms.fedit.variants`): it builds the
adapter to start from (the shared parts received, its own rank, parts kept in its node state),
brings a merged base up to date, freezes what the variant freezes and uploads what it uploads.
:func:`train` and :func:`evaluate` are the plain-Python rounds the baselines share.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from fedtune.algorithms.base import ClientHook, NodeState
from fedtune.algorithms.fedit.adapter import (
    WIRE_DTYPE,
    adapter_state,
    load_adapter_state,
    trainable_keys,
)
from fedtune.algorithms.fedit.dpo import dpo_settings, reference_logps
from fedtune.algorithms.fedit.factors import Arrays, select, truncate
from fedtune.algorithms.fedit.merged import RECORD, VERSION, apply_update
from fedtune.algorithms.fedit.model import (
    fresh_adapter,
    initial_adapter,
    peft_model_for,
    set_base,
)
from fedtune.algorithms.fedit.variants import variant
from fedtune.config import Config
from fedtune.data.pairs import PairSet
from fedtune.data.tokenize import EncodedSet
from fedtune.eval.loss import heldout_loss
from fedtune.eval.preference import preference_metrics
from fedtune.node import Node, node_data, node_pairs
from fedtune.train.dpo import DPOStats, batch_loss_fn, dropout_off
from fedtune.train.local import SFTSettings, train_round
from fedtune.train.terms import strategy_terms
from fedtune.wire import NUM_EXAMPLES, Records


@dataclass
class TrainResult:
    arrays: dict[str, np.ndarray]
    num_examples: int
    metrics: dict[str, float]
    steps: int  # optimizer steps taken


@contextlib.contextmanager
def frozen(model: torch.nn.Module, parts: frozenset[str]) -> Iterator[None]:
    """Parameters of the active adapter whose part (``A``, ``B``) is in ``parts`` do not train
    inside the block (FFA-LoRA's A); the model is shared, so they are unfrozen after it."""
    names = {f".lora_{p}.{model.active_adapter}.weight" for p in parts}
    params = [p for n, p in model.named_parameters()
              if p.requires_grad and any(n.endswith(s) for s in names)]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def train(cfg: Config, arrays: dict[str, np.ndarray], server_round: int, lr: float,
          node: Node, data: EncodedSet | PairSet | None = None, steps: int | None = None,
          prox_mu: float = 0.0, grad_correction: dict[str, np.ndarray] | None = None,
          rank: int | None = None, freeze: frozenset[str] = frozenset(),
          base: Arrays | None = None) -> TrainResult:
    """One local SFT (or, for objective=dpo, DPO) round from the adapter ``arrays`` on the
    node's data (or ``data``), for ``local-steps`` optimizer steps (or ``steps``).

    ``prox_mu`` adds FedProx's proximal term; ``grad_correction`` (adapter key -> array) is
    added to every gradient (SCAFFOLD's c - c_i). ``rank``: the adapter's rank (None:
    ``lora-r``); ``freeze``: parts that do not train; ``base``: a merged change of the base
    weights (FLoRA, FedEx-LoRA), None for the untouched base.
    """
    model, tokenizer = peft_model_for(cfg, rank)
    batch_loss, dpo_stats = None, None
    if cfg.train.objective == "dpo":  # the reference first: computing it swaps the adapter
        if base is not None:
            set_base(cfg, None)  # the reference is the model the run started from
        data = node_pairs(cfg, node) if data is None else data
        reference = reference_logps(cfg, model, data, tokenizer.pad_token_id)
        dpo_stats = DPOStats()
        batch_loss = batch_loss_fn(model, data, reference, dpo_settings(cfg),
                                   tokenizer.pad_token_id, dpo_stats)
    if base is not None:
        set_base(cfg, base)
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
                           max_grad_norm=t.max_grad_norm,
                           grad_terms=strategy_terms(prox_mu, correction),
                           gradient_checkpointing=cfg.model.gradient_checkpointing)
    # DPO: the policy's log-probs without dropout, as the reference's are (TRL's default)
    with (dropout_off(model) if batch_loss is not None else contextlib.nullcontext(),
          frozen(model, freeze)):
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


def evaluate(cfg: Config, arrays: dict[str, np.ndarray], node: Node,
             base: Arrays | None = None) -> tuple[float, int]:
    """Held-out loss (DPO loss for objective=dpo) of the adapter ``arrays`` (on the merged
    ``base``, if any) on this client's own held-out examples."""
    model, tokenizer = peft_model_for(cfg)
    if cfg.train.objective == "dpo":
        if base is not None:
            set_base(cfg, None)
        pairs = node_pairs(cfg, node, held_out=True)
        reference = reference_logps(cfg, model, pairs, tokenizer.pad_token_id)
        if base is not None:
            set_base(cfg, base)
        load_adapter_state(model, arrays)
        metrics = preference_metrics(model, pairs, reference, dpo_settings(cfg),
                                     tokenizer.pad_token_id, cfg.eval.eval_batch_size)
        return metrics["eval_loss"], len(pairs)
    if base is not None:
        set_base(cfg, base)
    load_adapter_state(model, arrays)
    data = node_data(cfg, node, held_out=True)
    return heldout_loss(model, data, tokenizer.pad_token_id, cfg.eval.eval_batch_size), len(data)


LOCAL = "lora-local"  # node-state entry: the parts a personalised variant keeps (FedSA's B)


class FedITClient:
    """FedIT's client side: records ``arrays`` (the shared parts of the global adapter) and
    ``config`` (``lr``, ``server-round``, FedProx's ``proximal-mu``) in, plus the merged base's
    update for FLoRA/FedEx-LoRA; the uploaded parts in 16 bits and the round's metrics out. A
    strategy's client hook (SCAFFOLD) adds its records around the round."""

    def __init__(self, cfg: Config, hook: ClientHook | None = None) -> None:
        self.cfg = cfg
        self.variant = variant(cfg)
        self.hook = hook

    def rank(self, node: Node) -> int | None:
        """This node's rank, None when it is the global ``lora-r``."""
        lora = self.cfg.lora
        rank = lora.rank_for(node.partition_id, node.lora_r)
        if rank == lora.lora_r:
            return None
        if not self.variant.mixed_ranks:
            raise ValueError(f"this node's rank {rank} differs from lora-r={lora.lora_r}, and "
                             f"lora-aggregation='{self.variant.name}' needs one rank for all")
        if self.cfg.privacy.enabled or self.cfg.secagg.enabled:
            raise ValueError(f"this node's rank {rank} differs from lora-r={lora.lora_r}, and "
                             "differential privacy and secure aggregation need one rank for all")
        if self.variant.name == "fedit" and rank > lora.lora_r:
            raise ValueError(f"this node's rank {rank} is above lora-r={lora.lora_r}, the "
                             "global adapter's rank that fedit pads to")
        return rank

    def start(self, received: Arrays, rank: int | None, state: NodeState,
              fresh: tuple[int, str] | None = None) -> Arrays:
        """The adapter this node starts from: its rank's initialisation, overwritten by the
        shared parts received (truncated to its rank) and the parts it keeps itself.
        ``fresh`` = (round, node): a restarting variant with ``lora-restart-init='fresh'``
        starts from a new initialisation of its own instead (:func:`fresh_adapter`)."""
        if self.variant.restarts or self.variant.frozen or self.variant.local or rank:
            init = (fresh_adapter(self.cfg, rank, *fresh) if fresh is not None
                    else initial_adapter(self.cfg, rank))
            adapter = {**init, **(truncate(received, rank) if rank else received)}
            adapter.update(state.get(LOCAL, {}))
            return adapter
        return received  # FedIT at lora-r: the global adapter, as it came

    def base(self, content: Records, state: NodeState) -> Arrays | None:
        """A merged base brought up to date by the message (kept in the node state)."""
        if not self.variant.merges:
            return None
        at = int(state.get(VERSION, {}).get("round", np.zeros(1))[0])
        delta, at = apply_update(state.get(RECORD, {}), at, content)
        state[RECORD], state[VERSION] = delta, {"round": np.array([at], np.float32)}
        return delta

    def train(self, content: Records, node: Node, state: NodeState) -> Records:
        conf, v = content.configs["config"], self.variant
        received = {k: a.astype(np.float32, copy=False)
                    for k, a in content.arrays["arrays"].items()}
        rank = self.rank(node)
        base = self.base(content, state)
        fresh = None
        if v.restarts and self.cfg.lora.lora_restart_init == "fresh":
            fresh = (int(conf["server-round"]), node.name)
        x = self.start(received, rank, state, fresh)
        hook = self.hook
        correction = hook.before_train(content, state) if hook is not None else None
        lr = float(conf["lr"])
        result = train(self.cfg, x, server_round=int(conf["server-round"]), lr=lr, node=node,
                       prox_mu=float(conf.get("proximal-mu", 0.0)), grad_correction=correction,
                       rank=rank, freeze=v.frozen, base=base)
        if v.local:
            state[LOCAL] = select(result.arrays, v.local)
        upload = select(result.arrays, v.uploads)
        reply = Records(
            arrays={"arrays": {k: a.astype(WIRE_DTYPE) for k, a in upload.items()}},
            metrics={"metrics": {NUM_EXAMPLES: result.num_examples, **result.metrics}})
        if hook is not None:
            hook.after_train(x, result.arrays, result.steps, lr, state, reply)
        return reply

    def evaluate(self, content: Records, node: Node, state: NodeState) -> Records:
        """The global model on this node's held-out data; FedSA-LoRA's with the node's own B
        (its personalised model). A merged base is brought up to date for the evaluation only,
        so a node's base moves with its train messages, whose bytes count the catch-up."""
        received = {k: a.astype(np.float32, copy=False)
                    for k, a in content.arrays["arrays"].items()}
        base = self.base(content, dict(state))  # kept as it was: only training moves it
        loss, n = evaluate(self.cfg, self.start(received, None, state), node, base)
        return Records(metrics={"metrics": {"eval-loss": loss, NUM_EXAMPLES: n}})

