"""FedIT: LoRA adapters with peft, and adapter state <-> named numpy arrays.

The adapter state is exactly what ``get_peft_model_state_dict`` returns (LoRA A/B matrices and
any ``modules_to_save`` copies), keyed by peft's names, so a saved global adapter loads with
``PeftModel.from_pretrained``.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from peft import (
    LoraConfig,
    PeftModel,
    get_peft_model,
    get_peft_model_state_dict,
    set_peft_model_state_dict,
)
from transformers import PreTrainedModel

from fedtune.algorithms.fedit.config import LoraSection
from fedtune.models.targets import lora_targets

WIRE_DTYPE = np.float16  # adapters travel in 16 bits; the server keeps float32 masters


def modules_to_save(cfg: LoraSection, base_is_random: bool) -> list[str] | None:
    """Resolve ``lora-modules-to-save``; "auto" trains embeddings and head of a random base."""
    value = cfg.lora_modules_to_save.strip()
    if value == "auto":
        return ["embed_tokens", "lm_head"] if base_is_random else None
    names = [v.strip() for v in value.split(",") if v.strip()]
    return names or None


def lora_config(cfg: LoraSection, base_is_random: bool = False,
                model: PreTrainedModel | None = None) -> LoraConfig:
    """peft's LoraConfig for this section; with ``model``, ``lora-target-modules`` is resolved
    and checked against that model's layers (:func:`fedtune.models.targets.lora_targets`)."""
    return LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=lora_targets(cfg.lora_target_modules, model),
        modules_to_save=modules_to_save(cfg, base_is_random),
        task_type="CAUSAL_LM",
    )


def add_lora(model: PreTrainedModel, cfg: LoraSection, base_is_random: bool = False) -> PeftModel:
    """Wrap ``model`` with a fresh LoRA adapter (deterministic init given torch's seed)."""
    return get_peft_model(model, lora_config(cfg, base_is_random, model))


def adapter_state(model: PeftModel) -> OrderedDict[str, np.ndarray]:
    """The trainable adapter as float32 numpy arrays, in peft's key order."""
    state = get_peft_model_state_dict(model, adapter_name=model.active_adapter)
    return OrderedDict(
        (k, v.detach().to(device="cpu", dtype=torch.float32).numpy().copy())
        for k, v in state.items()
    )


def load_adapter_state(model: PeftModel, arrays: dict[str, np.ndarray]) -> None:
    """Load named arrays into the adapter; every key must match the model's adapter exactly."""
    expected = get_peft_model_state_dict(model, adapter_name=model.active_adapter)
    missing, extra = set(expected) - set(arrays), set(arrays) - set(expected)
    if missing or extra:
        raise KeyError(f"adapter keys differ: missing {sorted(missing)[:3]}, "
                       f"extra {sorted(extra)[:3]}")
    ref = next(iter(expected.values()))
    tensors = {
        k: torch.as_tensor(np.asarray(v, dtype=np.float32)).to(ref.device, expected[k].dtype)
        for k, v in arrays.items()
    }
    set_peft_model_state_dict(model, tensors, adapter_name=model.active_adapter)


def adapter_spec(model: PeftModel) -> dict[str, tuple[int, ...]]:
    """Key -> shape, used by the server to validate client replies."""
    state = get_peft_model_state_dict(model, adapter_name=model.active_adapter)
    return {k: tuple(v.shape) for k, v in state.items()}


def trainable_keys(model: PeftModel) -> list[str]:
    """The adapter-state key of every trainable parameter, in ``model.parameters()`` order
    (matched by storage: peft's state dict holds views of the parameters)."""
    state = get_peft_model_state_dict(model, adapter_name=model.active_adapter)
    by_ptr = {v.data_ptr(): k for k, v in state.items()}
    return [by_ptr[p.data_ptr()] for p in model.parameters() if p.requires_grad]
