"""FedIT: peft adapters, and their trainable state <-> named numpy arrays.

The adapter state is what ``get_peft_model_state_dict`` returns for the method
(:mod:`~fedtune.algorithms.fedit.methods`; LoRA: its A/B matrices and any ``modules_to_save``
copies) less the frozen tensors every party builds itself (VeRA's shared projections), keyed by
peft's names, so a saved global adapter loads with ``PeftModel.from_pretrained``.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from peft import (
    PeftConfig,
    PeftModel,
    get_peft_model,
    get_peft_model_state_dict,
    set_peft_model_state_dict,
)
from transformers import PreTrainedModel

from fedtune.algorithms.fedit.config import LoraSection
from fedtune.algorithms.fedit.methods import peft_config

WIRE_DTYPE = np.float16  # adapters travel in 16 bits; the server keeps float32 masters


def modules_to_save(cfg: LoraSection, base_is_random: bool) -> list[str] | None:
    """Resolve ``lora-modules-to-save``; "auto" trains embeddings and head of a random base."""
    value = cfg.lora_modules_to_save.strip()
    if value == "auto":
        return ["embed_tokens", "lm_head"] if base_is_random else None
    names = [v.strip() for v in value.split(",") if v.strip()]
    return names or None


def adapter_config(cfg: LoraSection, base_is_random: bool = False,
                   model: PreTrainedModel | None = None) -> PeftConfig:
    """peft's config of the section's ``peft-method``; with ``model``, ``lora-target-modules``
    is resolved and checked against that model's layers."""
    return peft_config(cfg, model, modules_to_save(cfg, base_is_random))


def add_adapter(model: PreTrainedModel, cfg: LoraSection, base_is_random: bool = False
                ) -> PeftModel:
    """Wrap ``model`` with a fresh adapter (deterministic init given torch's seed)."""
    return get_peft_model(model, adapter_config(cfg, base_is_random, model))


def _state(model: PeftModel) -> dict[str, torch.Tensor]:
    # save_embedding_layers=False: peft's default ("auto") asks the Hugging Face hub on every
    # call whether the base's config.json exists and reads its vocabulary size (fedtune never
    # resizes embeddings): two requests per call, several calls a round, from every node of a
    # run on a hub model. What "auto" would add (a targeted embedding's frozen base weight)
    # is frozen, and left out of the trainable state anyway.
    return get_peft_model_state_dict(model, adapter_name=model.active_adapter,
                                     save_embedding_layers=False)


def save_adapter(model: PeftModel, out: Path) -> None:
    """``save_pretrained`` with ``save_embedding_layers=False``, for the reason in
    :func:`_state`: a run's last save asks the hub nothing either. A targeted embedding's base
    weight is not copied into the adapter file; the base model, which fedtune never resizes,
    has it."""
    model.save_pretrained(out, save_embedding_layers=False)


def _frozen_keys(model: PeftModel, state: dict[str, torch.Tensor]) -> set[str]:
    """The state's entries that are views of frozen tensors (VeRA's projections): built by
    every party from the same inputs, never trained or sent."""
    frozen = {t.data_ptr() for t in model.buffers()}
    frozen |= {p.data_ptr() for p in model.parameters() if not p.requires_grad}
    return {k for k, v in state.items() if v.data_ptr() in frozen}


def _trainable_state(model: PeftModel) -> OrderedDict[str, torch.Tensor]:
    state = _state(model)
    frozen = _frozen_keys(model, state)
    return OrderedDict((k, v) for k, v in state.items() if k not in frozen)


def adapter_state(model: PeftModel) -> OrderedDict[str, np.ndarray]:
    """The trainable adapter as float32 numpy arrays, in peft's key order."""
    return OrderedDict(
        (k, v.detach().to(device="cpu", dtype=torch.float32).numpy().copy())
        for k, v in _trainable_state(model).items()
    )


def load_adapter_state(model: PeftModel, arrays: dict[str, np.ndarray]) -> None:
    """Load named arrays into the adapter's trainable state; the keys must match it exactly
    (the frozen parts stay as the process built them)."""
    state = _state(model)
    frozen = _frozen_keys(model, state)
    expected = {k for k in state if k not in frozen}
    missing, extra = expected - set(arrays), set(arrays) - expected
    if missing or extra:
        raise KeyError(f"adapter keys differ: missing {sorted(missing)[:3]}, "
                       f"extra {sorted(extra)[:3]}")
    device = next(iter(state.values())).device
    tensors = {k: state[k] for k in frozen}
    tensors.update({
        k: torch.as_tensor(np.asarray(v, dtype=np.float32)).to(device, state[k].dtype)
        for k, v in arrays.items()
    })
    set_peft_model_state_dict(model, tensors, adapter_name=model.active_adapter)


def adapter_spec(model: PeftModel) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the trainable state, used by the server to validate client replies."""
    return {k: tuple(v.shape) for k, v in _trainable_state(model).items()}


def trainable_keys(model: PeftModel) -> list[str]:
    """The adapter-state key of every trainable parameter, in ``model.parameters()`` order
    (matched by storage: peft's state dict holds views of the parameters, but a soft prompt's
    is computed from its embedding table, which is matched by name)."""
    state = _trainable_state(model)
    by_ptr = {v.data_ptr(): k for k, v in state.items()}
    prompt = {p.data_ptr() for n, p in model.named_parameters()
              if n.startswith("prompt_encoder.")}
    return [by_ptr.get(p.data_ptr()) or ("prompt_embeddings" if p.data_ptr() in prompt else
                                         by_ptr[p.data_ptr()])
            for p in model.parameters() if p.requires_grad]
