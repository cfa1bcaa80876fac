"""A Ferret client's work: first-order local steps on every weight from the global version,
then the update's projection onto the shared seeds (Shu et al., ICML 2025, Alg. 1)."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import numpy as np

from fedtune.algorithms.base import NodeState
from fedtune.algorithms.fedkseed import client as fedkseed_client
from fedtune.algorithms.fedkseed.dpo import reference_logps
from fedtune.algorithms.ferret.model import ferret_model_for
from fedtune.algorithms.ferret.projection import project
from fedtune.config import Config
from fedtune.node import Node, node_data, node_pairs
from fedtune.seeded import pack_pairs
from fedtune.seeded.shared import identity_mismatch
from fedtune.seeding import rng
from fedtune.train.dpo import DPOSettings, DPOStats, batch_loss_fn, dropout_off
from fedtune.train.local import SFTSettings, train_round
from fedtune.wire import NUM_EXAMPLES, Records


@dataclass
class FerretResult:
    entries: np.ndarray  # int64 indices b * K + k into A
    gammas: np.ndarray  # float32 projection coefficients, aligned with entries
    num_examples: int
    metrics: dict[str, float]


def train(cfg: Config, accumulated: np.ndarray, server_round: int, node: Node,
          conf: dict[str, object]) -> FerretResult:
    """``local-steps`` optimizer steps on the node's SFT (or DPO) loss from version
    ``accumulated``, then the projection of the change. ``conf``: the round config (identity,
    the round's ``lr``); an identity mismatch refuses the round."""
    started = time.perf_counter()
    fm = ferret_model_for(cfg)
    mismatch = identity_mismatch(fm.identity, conf)
    if mismatch:
        raise ValueError(mismatch)
    t = cfg.train
    batch_loss, dpo_stats = None, None
    if t.objective == "dpo":  # reference (w0) log-probs first: computing them loads w0
        data = node_pairs(cfg, node)
        reference = reference_logps(cfg, fm, data)
        dpo_stats = DPOStats()
        batch_loss = batch_loss_fn(fm.model, data, reference, DPOSettings.from_config(t),
                                   fm.tokenizer.pad_token_id, dpo_stats)
    else:
        data = node_data(cfg, node)
    fm.load(accumulated, cfg.output.cache_dir)
    fm.mark_changed()  # the steps move the weights in place; the next load restores them
    settings = SFTSettings(steps=t.local_steps, batch_size=t.batch_size, lr=float(conf["lr"]),
                           grad_accum=t.grad_accum, weight_decay=t.weight_decay,
                           max_grad_norm=t.max_grad_norm, optimizer=cfg.ferret.ferret_optimizer)
    with dropout_off(fm.model) if batch_loss is not None else contextlib.nullcontext():
        stats = train_round(fm.model, data, settings, fm.tokenizer.pad_token_id,
                            (cfg.server.seed, server_round, node.name), batch_loss=batch_loss)
    fm.model.zero_grad(set_to_none=True)  # free the gradients before projecting
    entries, gammas, norms = project(fm.store, rng(cfg.server.seed, "ferret", server_round,
                                                   node.name), cfg.ferret.ferret_min_seeds)
    return FerretResult(entries, gammas, len(data), {
        "train-loss": stats.train_loss,
        "train-seconds": time.perf_counter() - started,  # catch-up, local steps, projection
        "update-norm": float(np.sqrt(np.square(norms).sum())),
        "coefficients": int(entries.size),
        "dropped-examples": data.dropped,
        **(dpo_stats.metrics() if dpo_stats is not None else {}),
    })


class FerretClient:
    """Ferret's client side: records ``arrays`` (A) and ``config`` (``server-round``, ``lr``,
    the version's identity) in; the packed (entry, coefficient) pairs (record ``zo``, the seed
    strategies' format) and the round's metrics out."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg

    def train(self, content: Records, node: Node, state: NodeState) -> Records:
        del state  # nothing stays on a node between rounds but the version cache on disk
        conf = content.configs["config"]
        res = train(self.cfg, content.arrays["arrays"]["accumulated"],
                    int(conf["server-round"]), node, conf)
        fm = ferret_model_for(self.cfg)
        pairs = pack_pairs(res.entries, res.gammas, fm.store.codes.size)
        return Records(configs={"zo": {"pairs": pairs}},
                       metrics={"metrics": {NUM_EXAMPLES: res.num_examples, **res.metrics}})

    def evaluate(self, content: Records, node: Node, state: NodeState) -> Records:
        loss, n = fedkseed_client.evaluate(self.cfg, content.arrays["arrays"]["accumulated"],
                                           node, ferret_model_for(self.cfg))
        return Records(metrics={"metrics": {"eval-loss": loss, NUM_EXAMPLES: n}})
