"""Server-side Ferret: the version's identity and the round's local lr out, the coefficient
replies checked, evaluation of a version, the result (the reconstructed model as an HF folder).

A is one accumulated coefficient per (block, seed), L * K entries; the ``seeds`` strategy
(:mod:`fedtune.strategies.seeds`) aggregates the replies into it exactly as FedKSeed's
scalars: A_bk += sum_i w_i gamma_ibk, w_i by examples or equal (``seeds-equal-weights``, the
official script's choice), so with a constant server lr the model is the FedAvg of the clients'
reconstructed updates. It sees A's entries as a pool of L * K coordinates.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fedtune.algorithms.fedkseed.server import FedKSeedServer
from fedtune.algorithms.ferret.config import ferret_lr
from fedtune.algorithms.ferret.model import FRAC_BITS, ferret_model_for
from fedtune.algorithms.ferret.projection import SIGMA2
from fedtune.config import Config
from fedtune.models.loading import is_tiny
from fedtune.payloads import BlockSeedsPayload
from fedtune.seeded import SeedPool, pack_pairs, unpack_pairs
from fedtune.train.schedule import round_lr, server_lr
from fedtune.wire import Records, check_metrics

STATE_FILE = "ferret-state.npz"


class FerretServer(FedKSeedServer):
    """FedKSeed's server (evaluation by version, checkpoint state) over Ferret's model."""

    model_for = staticmethod(ferret_model_for)

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        # the strategy's coordinates: one per entry of A (its "seeds" are entry ids)
        self.pool = SeedPool(np.arange(1, self.zm.store.codes.size + 1))
        store = self.zm.store  # the trust policy's pool: blocks x seeds, weighted by block size
        sizes = np.bincount(store.blocks, [p.numel() for p in store.params], store.num_blocks)
        self.payload = BlockSeedsPayload.of(store.seeds.size, sizes.tolist(), SIGMA2)
        self.server_lr_factor = 1.0  # this round's server lr / ferret-server-lr (train_config)

    def check_reply(self, content: Records) -> str | None:
        """Distinct entries of A (< L * K), finite coefficients, packed; and metrics."""
        entries, problem = self.reply_pairs(content, "coefficient")
        if problem:
            return problem
        if np.unique(entries).size != entries.size:
            return "a coefficient entry appears twice"
        return check_metrics(content)

    def train_config(self, server_round: int) -> dict[str, int | str | float]:
        """The version's identity (clients refuse a mismatch) and the round's local lr. Notes
        the round's server lr factor for :meth:`receive`."""
        t, f, rounds = self.cfg.train, self.cfg.ferret, self.cfg.server.num_server_rounds
        base = ferret_lr(f, self.zm.num_params, is_tiny(self.cfg.model.model))
        lr = round_lr(base, server_round, rounds, t.lr_schedule, t.min_lr_ratio)
        self.server_lr_factor = server_lr(1.0, server_round, rounds, f.ferret_server_lr_schedule)
        return {**self.zm.identity, "lr": lr}

    def receive(self, replies: list[Records]) -> list[Records]:
        """``ferret-server-lr-schedule``: the model is w0 - eta_s sum A z with one eta_s for
        every version, so round r's server lr eta_s * f_r enters A as f_r x the round's
        coefficients (before the strategy's momentum). constant: f_r = 1, replies untouched."""
        factor = self.server_lr_factor
        if factor == 1.0:
            return replies
        k = self.zm.store.codes.size
        for reply in replies:
            entries, gammas = unpack_pairs(reply.configs["zo"]["pairs"], k)
            reply.configs["zo"]["pairs"] = pack_pairs(entries, gammas * np.float32(factor), k)
        return replies

    def save(self, arrays: dict[str, np.ndarray], run_dir: Path) -> Path:
        """``model/`` (the reconstructed model, an HF folder: ``fedtune generate``/``export``
        and ``from_pretrained`` load it) and ``ferret-state.npz`` (seeds, blocks, A, server lr:
        the exact version, for audit or to rebuild the model from the base)."""
        store = self.zm.store
        np.savez(run_dir / STATE_FILE, seeds=store.seeds, blocks=store.blocks,
                 accumulated=arrays["accumulated"], server_lr=np.float64(self.zm.lr),
                 frac_bits=np.int64(FRAC_BITS))
        (run_dir / "ferret.json").write_text(json.dumps(
            {"base_model": self.cfg.model.model, "state": STATE_FILE, "server_lr": self.zm.lr,
             "k": int(store.seeds.size), "blocks": store.num_blocks}, indent=2))
        self.zm.load(arrays["accumulated"], self.cfg.output.cache_dir)
        self.zm.model.save_pretrained(run_dir / "model")
        self.zm.tokenizer.save_pretrained(run_dir / "model")
        return run_dir / "model"
