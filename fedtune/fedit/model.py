"""The LoRA-wrapped model a process trains or evaluates, built once per process.

In simulation a Ray worker serves many virtual clients one after another: they share this
model and only swap the adapter weights, so the base model is loaded once per worker.
"""

from __future__ import annotations

import functools

import torch
from peft import PeftModel

from fedtune.config import Config
from fedtune.lora import add_lora
from fedtune.models import choose_placement, is_tiny, load_model, load_tokenizer
from fedtune.seeding import derive_seed


@functools.lru_cache(maxsize=2)
def _cached(model: str, device: str, dtype: str, lora_key: tuple, seed: int):
    cfg = Config()
    cfg.model.model, cfg.model.device, cfg.model.dtype = model, device, dtype
    (cfg.lora.lora_r, cfg.lora.lora_alpha, cfg.lora.lora_dropout, cfg.lora.lora_target_modules,
     cfg.lora.lora_modules_to_save) = lora_key
    placement = choose_placement(device, dtype)
    tokenizer = load_tokenizer(model)
    base = load_model(model, placement)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "lora-init"))
        peft_model = add_lora(base, cfg.lora, base_is_random=is_tiny(model))
    return peft_model, tokenizer


def peft_model_for(cfg: Config) -> tuple[PeftModel, object]:
    """(LoRA model, tokenizer) for this config, shared within the process."""
    lo = cfg.lora
    key = (lo.lora_r, lo.lora_alpha, lo.lora_dropout, lo.lora_target_modules,
           lo.lora_modules_to_save)
    return _cached(cfg.model.model, cfg.model.device, cfg.model.dtype, key, cfg.server.seed)
