"""Server-side FedKSeed: the seed pool and its statistics, evaluation by replay, the result."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fedtune.algorithms.base import ServerHooks
from fedtune.algorithms.fedkseed.dpo import heldout_pairs
from fedtune.algorithms.fedkseed.model import zo_model_for
from fedtune.algorithms.fedkseed.pro import encode_importance
from fedtune.config import Config
from fedtune.eval.central import CentralEvaluator
from fedtune.models.loading import build_tiny, is_tiny
from fedtune.payloads import Payload, SeedsPayload
from fedtune.seeded import SeedPool, unpack_pairs
from fedtune.seeded.shared import IDENTITY, identity_digest
from fedtune.wire import Records, check_metrics

STATE_FILE = "fedkseed-state.npz"


class FedKSeedServer(ServerHooks):
    """The seed pool and its (Pro) statistics, evaluation of a version by replay, the result.
    A lives in the round loop; the strategy aggregates it."""

    wire_dtype = None  # A travels as float32: the model is defined by its exact value
    model_for = staticmethod(zo_model_for)  # the process's model at exact versions

    def __init__(self, cfg: Config, pro: bool = False) -> None:
        self.cfg = cfg
        self.pro = pro  # FedKSeed-Pro: clients sample seeds by importance
        self.zm = self.model_for(cfg)
        self.pool = SeedPool(self.zm.seeds)
        self.payload: Payload = SeedsPayload(self.pool.k)  # what the trust policy reads
        dpo = cfg.train.objective == "dpo"  # held-out preference pairs instead of examples
        self.evaluator = CentralEvaluator(cfg, self.zm.tokenizer,
                                          heldout_pairs(cfg, self.zm) if dpo else None)

    def initial_arrays(self) -> dict[str, np.ndarray]:
        return {"accumulated": np.zeros(self.pool.k, dtype=np.float32)}

    def state_dict(self) -> dict[str, np.ndarray]:
        """What changes per round besides A: the seeds' (Pro) statistics. The strategy keeps
        its own (server momentum)."""
        return {f"pro_{k}": v for k, v in self.pool.state_dict().items()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Restore the statistics in place (the strategy shares this pool object)."""
        pool = SeedPool.from_state_dict({k[4:]: v for k, v in state.items()
                                         if k.startswith("pro_")})
        if not np.array_equal(pool.seeds, self.pool.seeds):
            raise ValueError("the saved seed pool differs from this run's (seed or zo-seeds)")
        self.pool.abs_sums[:] = pool.abs_sums
        self.pool.counts[:] = pool.counts

    def check_reply(self, content: Records) -> str | None:
        """At most ``zo-steps`` (seed index < K, finite scalar) pairs, packed, and metrics.

        A client uploads only the steps it took (a skipped step is left out), so 0 pairs is a
        valid reply: a client that took no step contributes a zero delta."""
        indices, problem = self.reply_pairs(content, "seed")
        if problem:
            return problem
        if len(indices) > self.cfg.zo.zo_steps:
            return f"{len(indices)} seed pairs, expected at most zo-steps={self.cfg.zo.zo_steps}"
        return check_metrics(content)

    def reply_pairs(self, content: Records, what: str) -> tuple[np.ndarray, str | None]:
        """The entries of the reply's packed (entry < pool size, finite scalar) pairs, or a
        reason to drop it."""
        record = content.configs.get("zo")
        if record is None or not isinstance(record.get("pairs"), bytes):
            return np.zeros(0, np.int64), "no 'zo' record with packed 'pairs' bytes"
        try:
            return unpack_pairs(record["pairs"], self.pool.k)[0], None
        except ValueError as err:
            return np.zeros(0, np.int64), f"bad {what} pairs: {err}"

    def train_config(self, server_round: int) -> dict[str, int | str | bytes]:
        """What a version means (clients refuse a mismatch: the digest of the model's identity,
        whose fields each client hashes itself and compares in full) and, for Pro, the
        importance."""
        config: dict[str, int | str | bytes] = {IDENTITY: identity_digest(self.zm.identity)}
        if self.pro:
            config["importance"] = encode_importance(self.pool)
        return config

    def evaluate(self, arrays: dict[str, np.ndarray]) -> dict[str, float]:
        self.zm.load(arrays["accumulated"], self.cfg.output.cache_dir)
        return self.evaluator(self.zm.model)

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
            self.zm.load(arrays["accumulated"], self.cfg.output.cache_dir)
            self.zm.model.save_pretrained(run_dir / "model")
            self.zm.tokenizer.save_pretrained(run_dir / "model")
        return out
