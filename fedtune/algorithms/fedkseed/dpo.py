"""FedKSeed with the DPO objective: the reference is the run's w0, its log-probs cached.

Every party holds w0 already (the replay starts from it), so the reference costs no second
model: its log-probs are computed once per example set with w0 loaded (then the caller loads
the version it needs) and cached in the process and, when ``cache-dir`` is set (as
``fedtune simulate`` does), on disk for every process of the machine.
"""

from __future__ import annotations

import numpy as np

from fedtune.algorithms.fedkseed.model import ZOModel
from fedtune.config import Config
from fedtune.data.pairs import PairSet, encode_pairs
from fedtune.data.split import PAIRS, split
from fedtune.eval.preference import HeldOutPairs
from fedtune.train.dpo import DPOSettings, cached_reference, pair_logps


def reference_logps(cfg: Config, zm: ZOModel, data: PairSet) -> np.ndarray:
    """[n, 2] log-probs of ``data`` under w0. When computed, w0 stays loaded: call
    ``zm.load(accumulated)`` afterwards."""

    def compute() -> np.ndarray:
        zm.store.load_w0()
        return pair_logps(zm.model, data, zm.tokenizer.pad_token_id, cfg.eval.eval_batch_size)

    ref_id = f"zo-w0|{cfg.model.model}|{cfg.model.device}|float32"
    return cached_reference(ref_id, data, compute, cfg.output.cache_dir or None)


def heldout_pairs(cfg: Config, zm: ZOModel) -> HeldOutPairs:
    """The server's held-out pairs and their log-probs under w0 (objective=dpo)."""
    data = encode_pairs(zm.tokenizer, split(cfg.data, PAIRS, "server", cfg.server.seed),
                        cfg.model.max_seq_len)
    return HeldOutPairs(data, reference_logps(cfg, zm, data), DPOSettings.from_config(cfg.train),
                        zm.tokenizer.pad_token_id, cfg.eval.eval_batch_size)
