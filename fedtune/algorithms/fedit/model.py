"""The LoRA-wrapped model a process trains or evaluates, built once per process.

In simulation a Ray worker serves many virtual clients one after another: they share this
model and only swap the adapter weights, so the base model is loaded once per worker.
"""

from __future__ import annotations

import functools
from dataclasses import astuple
from pathlib import Path

import numpy as np
import torch
from peft import PeftModel

from fedtune.algorithms.fedit.adapter import adapter_state, add_lora
from fedtune.algorithms.fedit.config import LoraSection
from fedtune.config import Config
from fedtune.errors import ConfigError
from fedtune.models.loading import choose_placement, is_tiny, load_model, load_tokenizer
from fedtune.seeding import derive_seed


@functools.lru_cache(maxsize=2)
def _cached(model: str, device: str, dtype: str, lora_key: tuple, seed: int,
            init_adapter: str = ""):
    placement = choose_placement(device, dtype)
    tokenizer = load_tokenizer(model)
    base = load_model(model, placement)
    if init_adapter:
        peft_model = _from_adapter(base, init_adapter)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(seed, "lora-init"))
            peft_model = add_lora(base, LoraSection(*lora_key), base_is_random=is_tiny(model))
    return peft_model, tokenizer, adapter_state(peft_model)


def _from_adapter(base, path: str) -> PeftModel:
    """A trainable copy of a saved PEFT adapter (its own LoRA config: lora-* keys are unused)."""
    if not (Path(path) / "adapter_config.json").is_file():
        raise ConfigError(f"init-adapter='{path}' is not a PEFT adapter folder (no "
                          "adapter_config.json); pass a finished run's adapter folder, e.g. "
                          "runs/<run>/adapter.")
    try:
        model = PeftModel.from_pretrained(base, path, is_trainable=True)
    except (RuntimeError, ValueError) as err:
        raise ConfigError(f"init-adapter='{path}' does not fit the model: {err}; pass the "
                          "model the adapter was trained on as model=...") from None
    return model.to(next(base.parameters()).device)


def peft_model_for(cfg: Config) -> tuple[PeftModel, object]:
    """(LoRA model, tokenizer) for this config, shared within the process.

    The adapter weights are whatever was loaded last: callers load the arrays they need.
    """
    model, tokenizer, _ = _cached(*_key(cfg))
    return model, tokenizer


def initial_adapter(cfg: Config) -> dict[str, np.ndarray]:
    """The run's initial global adapter: seeded by the run seed, or ``init-adapter``'s."""
    return {k: v.copy() for k, v in _cached(*_key(cfg))[2].items()}


def _key(cfg: Config) -> tuple:
    return (cfg.model.model, cfg.model.device, cfg.model.dtype, astuple(cfg.lora),
            cfg.server.seed, cfg.train.init_adapter)
