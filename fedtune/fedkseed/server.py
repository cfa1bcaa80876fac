"""Server-side FedKSeed: the seed pool and its statistics, evaluation by replay, the result."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fedtune.config import Config
from fedtune.data import eval_split
from fedtune.data.tokenize import encode_examples
from fedtune.eval import answer_metrics, heldout_loss
from fedtune.fedkseed.dpo import heldout_pairs
from fedtune.fedkseed.model import pool_fingerprint, zo_model_for
from fedtune.fedkseed.pro import encode_importance
from fedtune.models import build_tiny, is_tiny
from fedtune.zo import SeedPool, accumulate_

STATE_FILE = "fedkseed-state.npz"


class FedKSeedServer:
    """Holds A (via the loop), the seed pool with Pro statistics, and a replayed model."""

    wire_dtype = None  # A travels as float32: the model is defined by its exact value

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.pro = cfg.train.algorithm == "fedkseed-pro"
        self.zm = zo_model_for(cfg)
        self.pool = SeedPool(self.zm.seeds)
        self.momentum = np.zeros(self.pool.k, dtype=np.float32)  # zo-server-momentum state
        dpo = cfg.train.objective == "dpo"  # held-out preference pairs instead of examples
        self.pairs = heldout_pairs(cfg, self.zm) if dpo else None
        self.eval_examples = [] if dpo else eval_split(cfg.data, cfg.server.seed)
        self.eval_data = encode_examples(self.zm.tokenizer, self.eval_examples,
                                         cfg.model.max_seq_len)

    def initial_arrays(self) -> dict[str, np.ndarray]:
        return {"accumulated": np.zeros(self.pool.k, dtype=np.float32)}

    def state_dict(self) -> dict[str, np.ndarray]:
        """What changes per round besides A: Pro's statistics and the server momentum."""
        return {"momentum": self.momentum.copy(),
                **{f"pro_{k}": v for k, v in self.pool.state_dict().items()}}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        pool = SeedPool.from_state_dict({k[4:]: v for k, v in state.items()
                                         if k.startswith("pro_")})
        if not np.array_equal(pool.seeds, self.pool.seeds):
            raise ValueError("the saved seed pool differs from this run's (seed or zo-seeds)")
        self.pool = pool
        self.momentum = np.asarray(state["momentum"], dtype=np.float32).copy()

    def train_config(self, server_round: int) -> dict[str, int | bytes]:
        config: dict[str, int | bytes] = {"pool": pool_fingerprint(self.pool.seeds)}
        if self.pro:
            config["importance"] = encode_importance(self.pool)
        return config

    def aggregate(self, accumulated: np.ndarray, replies: list[tuple[np.ndarray, np.ndarray, int]]
                  ) -> np.ndarray:
        """A += sum_i w_i * g_i (in reply order), and Pro's statistics; returns the new A.

        Options: ``zo-robust-clip`` bounds every scalar by a multiple of the round's median |g|
        (a client that scales its scalars up cannot move A further than an honest one), and
        ``zo-server-momentum`` adds beta x the previous round's step (the model is still the
        replay of A, so every party stays exact).
        """
        z = self.cfg.zo
        if z.zo_robust_clip > 0 and replies:
            scale = float(np.median(np.abs(np.concatenate([g for _, g, _ in replies]))))
            bound = np.float32(z.zo_robust_clip * scale)
            replies = [(i, np.clip(g, -bound, bound), n) for i, g, n in replies]
        delta = np.zeros_like(accumulated, dtype=np.float32)
        total = sum(n for _, _, n in replies)
        for indices, scalars, n in replies:
            weight = 1.0 / len(replies) if z.zo_equal_weights else n / total
            accumulate_(delta, indices, scalars, weight)
            self.pool.update(indices, scalars)
        if z.zo_server_momentum > 0:
            self.momentum = (np.float32(z.zo_server_momentum) * self.momentum + delta).astype(
                np.float32)
            delta = self.momentum
        return (accumulated + delta).astype(np.float32)

    def evaluate(self, arrays: dict[str, np.ndarray]) -> dict[str, float]:
        self.zm.load(arrays["accumulated"], self.cfg.zo.zo_cache_dir)
        if self.pairs is not None:  # DPO: reward accuracy, margin, log-probs, DPO loss
            return self.pairs.metrics(self.zm.model)
        loss = heldout_loss(self.zm.model, self.eval_data, self.zm.tokenizer.pad_token_id,
                            self.cfg.eval.eval_batch_size)
        metrics = {"eval_loss": loss, "perplexity": float(np.exp(min(loss, 50.0)))}
        metrics.update(answer_metrics(self.zm.model, self.zm.tokenizer, self.eval_examples,
                                   self.cfg.eval.max_new_tokens, self.cfg.eval.eval_batch_size,
                                      self.cfg.model.max_seq_len))
        return metrics

    def save(self, arrays: dict[str, np.ndarray], run_dir: Path) -> Path:
        """``fedkseed-state.npz`` (seeds, A, lr, Pro statistics) and, on request, the model."""
        out = run_dir / STATE_FILE
        np.savez(out, seeds=self.pool.seeds, accumulated=arrays["accumulated"],
                 lr=np.float64(self.zm.lr), eps=np.float64(self.zm.eps), **self.state_dict())
        (run_dir / "fedkseed.json").write_text(json.dumps(
            {"base_model": self.cfg.model.model, "state": STATE_FILE, "lr": self.zm.lr,
             "eps": self.zm.eps, "k": self.pool.k}, indent=2))
        if is_tiny(self.cfg.model.model):
            build_tiny().save_pretrained(run_dir / "base-model")
            self.zm.tokenizer.save_pretrained(run_dir / "base-model")
        if self.cfg.zo.save_full_model:
            self.zm.load(arrays["accumulated"], self.cfg.zo.zo_cache_dir)
            self.zm.model.save_pretrained(run_dir / "model")
            self.zm.tokenizer.save_pretrained(run_dir / "model")
        return out
