"""A FedKSeed client's work: take tau zeroth-order steps from the global model's version."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from fedtune.algorithms.base import NodeState
from fedtune.algorithms.fedkseed.dpo import reference_logps
from fedtune.algorithms.fedkseed.model import ZOModel, identity_mismatch, zo_model_for
from fedtune.algorithms.fedkseed.pro import probabilities_from
from fedtune.config import Config
from fedtune.data.pairs import PairSet
from fedtune.data.tokenize import EncodedSet, collate
from fedtune.eval.loss import heldout_loss
from fedtune.eval.preference import preference_metrics
from fedtune.node import Node, node_data, node_pairs
from fedtune.payloads import SeedsPayload
from fedtune.seeded import pack_pairs, sample_seed_indices, zo_step
from fedtune.seeding import rng
from fedtune.train.dpo import DPOSettings, DPOStats, pair_loss
from fedtune.train.local import batches
from fedtune.wire import NUM_EXAMPLES, Records


@dataclass
class ZOResult:
    seed_indices: np.ndarray  # int64, one per step taken (0..tau): skipped steps are left out
    scalars: np.ndarray  # float32, aligned with seed_indices
    num_examples: int
    metrics: dict[str, float]


def train(cfg: Config, accumulated: np.ndarray, server_round: int, node: Node,
          identity: dict[str, object], importance: bytes | None = None) -> ZOResult:
    """tau ZO-SGD steps on the SFT (or DPO) loss of this node's data (FedKSeed, Alg. 1,
    client side). ``identity``: the server's round config (or any mapping with the keys of
    :attr:`ZOModel.identity`); a mismatch refuses the round."""
    started = time.perf_counter()
    zm = zo_model_for(cfg)
    mismatch = identity_mismatch(zm.identity, identity)
    if mismatch:
        raise ValueError(mismatch)
    dpo = cfg.train.objective == "dpo"
    if dpo:  # reference (w0) log-probs first: computing them loads w0
        data: EncodedSet | PairSet = node_pairs(cfg, node)
        reference = reference_logps(cfg, zm, data)
        settings, dpo_stats = DPOSettings.from_config(cfg.train), DPOStats()
    else:
        data = node_data(cfg, node)
    zm.load(accumulated, cfg.output.cache_dir)
    zm.mark_changed()  # the steps below move the weights in place; the next load restores them
    if len(data) == 0:
        raise ValueError("no trainable examples on this node (all truncated away or no data)")
    k, tau = cfg.zo.zo_seeds, cfg.zo.zo_steps
    gen = rng(cfg.server.seed, "zo-seeds", server_round, node.name)
    probs = probabilities_from(importance, k) if importance is not None else None
    indices = sample_seed_indices(k, tau, gen, probs)
    scalars = np.zeros(tau, dtype=np.float32)
    taken = np.ones(tau, dtype=bool)  # a skipped step (NaN loss, |g| > zo-clip) is not uploaded
    pad = zm.tokenizer.pad_token_id
    device = zm.params[0].device
    losses, skipped = [], 0
    order = batches(len(data), cfg.train.batch_size, tau, cfg.server.seed, server_round,
                    node.name)
    for t, idx in enumerate(indices):
        picked = next(order)
        if dpo:
            def loss_fn(b: list[int] = picked) -> float:
                terms, _ = pair_loss(zm.model, data, b, reference, settings, pad)
                dpo_stats.add(terms)
                return float(terms.loss)
        else:
            batch = {key: v.to(device)
                     for key, v in collate([data.items[i] for i in picked], pad).items()}

            def loss_fn(b: dict = batch) -> float:
                return zm.model(**b).loss
        step = zo_step(zm.params, loss_fn, seed=int(zm.seeds[idx]),
                       seed_index=int(idx), eps=zm.eps, lr=zm.lr,
                       clip=cfg.zo.zo_clip or None)
        if step.skipped:
            skipped += 1
            taken[t] = False
        else:
            scalars[t] = step.g
            losses.append(step.loss)
    finite = [x for x in losses if math.isfinite(x)]
    # a client without a finite step loss reports none (not 0.0, which would drag the round's
    # mean down): the strategy's mean is over the clients that have one
    loss = {"train-loss": float(np.mean(finite))} if finite else {}
    return ZOResult(indices[taken], scalars[taken], len(data), {
        **loss,
        "train-seconds": time.perf_counter() - started,  # catch-up and the ZO steps
        # only when some were (the reply's pair count says it too: zo-steps - pairs); 21 B of
        # every default reply otherwise (the whole messages stay under 18,000 B)
        **({"skipped-steps": skipped} if skipped else {}),
        "dropped-examples": data.dropped,
        **(dpo_stats.metrics() if dpo else {}),  # over both perturbed forwards of each step
    })


def evaluate(cfg: Config, accumulated: np.ndarray, node: Node, zm: ZOModel | None = None
             ) -> tuple[float, int]:
    """Held-out loss (DPO loss for objective=dpo) of the global model of this version on the
    node's own held-out examples. ``zm``: the process's model (default: FedKSeed's; Ferret
    passes its own)."""
    zm = zm or zo_model_for(cfg)
    if cfg.train.objective == "dpo":
        pairs = node_pairs(cfg, node, held_out=True)
        reference = reference_logps(cfg, zm, pairs)
        zm.load(accumulated, cfg.output.cache_dir)
        metrics = preference_metrics(zm.model, pairs, reference,
                                     DPOSettings.from_config(cfg.train),
                                     zm.tokenizer.pad_token_id, cfg.eval.eval_batch_size)
        return metrics["eval_loss"], len(pairs)
    zm.load(accumulated, cfg.output.cache_dir)
    data = node_data(cfg, node, held_out=True)
    return heldout_loss(zm.model, data, zm.tokenizer.pad_token_id,
                        cfg.eval.eval_batch_size), len(data)


class FedKSeedClient:
    """FedKSeed's client side: records ``arrays`` (A) and ``config`` (``server-round``, the
    identity of the version ``model``/``zo-lr``/``zo-eps``/``pool``, FedKSeed-Pro's
    ``importance`` bytes) in; the packed
    (seed index, scalar) pairs (record ``zo``) and the round's metrics out."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.payload = SeedsPayload(cfg.zo.zo_seeds)  # its server side's (DP, SecAgg)

    def train(self, content: Records, node: Node, state: NodeState) -> Records:
        del state  # FedKSeed keeps nothing on a node between rounds (its cache is on disk)
        conf = content.configs["config"]
        importance = conf.get("importance")
        res = train(self.cfg, content.arrays["arrays"]["accumulated"],
                    int(conf["server-round"]), node, identity=conf,
                    importance=importance if isinstance(importance, bytes) else None)
        pairs = pack_pairs(res.seed_indices, res.scalars, self.cfg.zo.zo_seeds)
        return Records(configs={"zo": {"pairs": pairs}},
                       metrics={"metrics": {NUM_EXAMPLES: res.num_examples, **res.metrics}})

    def evaluate(self, content: Records, node: Node, state: NodeState) -> Records:
        loss, n = evaluate(self.cfg, content.arrays["arrays"]["accumulated"], node)
        return Records(metrics={"metrics": {"eval-loss": loss, NUM_EXAMPLES: n}})
