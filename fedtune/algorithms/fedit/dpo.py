"""FedIT with the DPO objective: the fixed reference of a LoRA run and its cached log-probs.

The reference is the model the run starts from: the base with the adapter disabled, or, with
``init-adapter`` or a ``lora-init`` that rewrites the base into a residual (PiSSA, OLoRA), the
run's initial adapter. Its log-probs are computed once per example set (the
adapter weights are loaded for it, then the caller loads the global adapter), so no second
model or adapter is held in memory.
"""

from __future__ import annotations

import os

import numpy as np
from peft import PeftModel

from fedtune.algorithms.fedit.adapter import load_adapter_state
from fedtune.algorithms.fedit.methods import REWRITES_BASE
from fedtune.algorithms.fedit.model import initial_adapter
from fedtune.config import Config
from fedtune.data.pairs import PairSet, encode_pairs
from fedtune.data.split import PAIRS, split
from fedtune.eval.preference import HeldOutPairs
from fedtune.train.dpo import DPOSettings, cached_reference, pair_logps


def dpo_settings(cfg: Config) -> DPOSettings:
    return DPOSettings.from_config(cfg.train)


def _reference_id(cfg: Config) -> str:
    m, init = cfg.model, cfg.train.init_adapter
    stamp = ""
    if init:
        files = sorted(f for f in os.listdir(init) if f.startswith("adapter_model"))
        stamp = ",".join(f"{f}:{os.stat(os.path.join(init, f)).st_mtime_ns}" for f in files)
    rewrites = cfg.lora.lora_init if cfg.lora.lora_init in REWRITES_BASE else ""
    quant = "" if m.quantization == "none" else (
        f"|{m.quantization},{m.quant_compute_dtype},{m.quant_double_quant}")
    return f"fedit|{m.model}|{m.dtype}|{m.device}|{init}|{stamp}" + (
        f"|{rewrites}" if rewrites else "") + quant


def reference_logps(cfg: Config, model: PeftModel, data: PairSet, pad_id: int) -> np.ndarray:
    """[n, 2] reference log-probs of ``data`` (cached). Leaves the initial adapter loaded when
    it had to compute them: load the adapter you need afterwards."""

    def compute() -> np.ndarray:
        if cfg.train.init_adapter or cfg.lora.lora_init in REWRITES_BASE:
            load_adapter_state(model, initial_adapter(cfg))
            return pair_logps(model, data, pad_id, cfg.eval.eval_batch_size)
        with model.disable_adapter():
            return pair_logps(model, data, pad_id, cfg.eval.eval_batch_size)

    return cached_reference(_reference_id(cfg), data, compute, cfg.output.cache_dir or None)


def heldout_pairs(cfg: Config, model: PeftModel, tokenizer) -> HeldOutPairs:
    """The server's held-out pairs and their reference log-probs (objective=dpo)."""
    held_out = split(cfg.data, PAIRS, "server", cfg.server.seed)
    data = encode_pairs(tokenizer, held_out, cfg.model.max_seq_len)
    pad = tokenizer.pad_token_id
    return HeldOutPairs(data, reference_logps(cfg, model, data, pad), dpo_settings(cfg), pad,
                        cfg.eval.eval_batch_size)
