"""Which layers of a model LoRA adapts (``lora-target-modules``), for any architecture.

``all-linear`` (the default) is peft's own rule: every ``nn.Linear`` and GPT-2-style ``Conv1D``
layer except the output head, whatever the layers are called (GPT-2 ``c_attn``/``c_proj``/
``c_fc``, GPT-NeoX ``query_key_value``/``dense``/``dense_h_to_4h``/``dense_4h_to_h``, Llama and
Qwen2 ``q_proj``/.../``down_proj``). ``auto`` (or an empty value) takes peft's per-architecture
table (``TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING``, the attention projections FedIT
adapts: ``c_attn`` on GPT-2, ``q_proj``/``v_proj`` on Llama and Qwen2). A comma list names layers
by their last name component, as peft matches them, and every name must exist in the model.
A model type peft has no table for, or a name the model lacks, is a :class:`ModelError` naming
the config key and the model's own linear layers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedtune.models.loading import ModelError, is_tiny

if TYPE_CHECKING:  # torch, transformers and peft are imported where used: the CLI's check of
    from torch import nn  # the built-in model's default targets runs without them

ALL_LINEAR = "all-linear"
AUTO = ("auto", "")
KEY = "lora-target-modules"
PEFT_PARTS = ("base_layer", "original_module", "modules_to_save")  # peft's wrappers' insides


def linear_layer_names(model: nn.Module) -> list[str]:
    """Last name components of the model's Linear/Conv1D layers except the output head, in
    first-seen order (what ``all-linear`` adapts)."""
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    head = _unwrap(model.get_output_embeddings()) if hasattr(
        model, "get_output_embeddings") else None
    names: list[str] = []
    for name, module in model.named_modules():
        parts = name.split(".")
        if any(p in PEFT_PARTS or p.startswith("lora_") for p in parts[1:]):
            continue  # the inside of a layer peft already wrapped
        module = _unwrap(module)
        if isinstance(module, nn.Linear | Conv1D) and module is not head and (
                parts[-1] not in names):
            names.append(parts[-1])
    return names


def _unwrap(module: nn.Module | None) -> nn.Module | None:
    """The original layer of a peft wrapper (LoRA layer, modules_to_save copy)."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import ModulesToSaveWrapper

    if isinstance(module, BaseTunerLayer):
        return module.get_base_layer()
    if isinstance(module, ModulesToSaveWrapper):
        return module.original_module
    return module


def _model_type(model: nn.Module) -> str:
    return str(getattr(getattr(model, "config", None), "model_type", "") or type(model).__name__)


def lora_targets(value: str, model: nn.Module | None = None) -> str | list[str] | None:
    """``lora-target-modules`` resolved for ``model``: ``"all-linear"``, or a list of layer
    names; ``None`` (peft then applies its own table) for ``auto`` when no model is given."""
    value = value.strip()
    layers = linear_layer_names(model) if model is not None else []
    kind = _model_type(model) if model is not None else ""
    if value == ALL_LINEAR:
        if model is not None and not layers:
            raise ModelError(f"The {kind} model has no linear layers for {KEY}='all-linear'; "
                             f"set {KEY} to a comma list of the module names to adapt.")
        return value
    if value.lower() in AUTO:
        if model is None:
            return None
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

        table = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(kind)
        if not table:
            raise ModelError(f"peft has no default LoRA target modules for model type '{kind}'; "
                             f"set {KEY}='all-linear' or a comma list of its layers "
                             f"({', '.join(layers) or 'none found'}).")
        return list(table)
    names = [t.strip() for t in value.split(",") if t.strip()]
    if model is not None:
        modules = [n for n, _ in model.named_modules()]
        missing = [t for t in names  # peft's rule: the full name, or its last components
                   if not any(n == t or n.endswith(f".{t}") for n in modules)]
        if missing:
            raise ModelError(f"{KEY}='{value}' names {', '.join(missing)}, which the {kind} "
                             f"model does not have; its linear layers are "
                             f"{', '.join(layers) or 'none'} (or set {KEY}='all-linear').")
    return names


def check_targets(name: str, value: str) -> None:
    """Resolve ``lora-target-modules`` against the model ``name`` without loading its weights
    (its config, built on the meta device): a bad value is one sentence before any engine
    starts. The built-in ``tiny`` Llama has linear layers and a peft table, so ``all-linear``
    and ``auto`` fit it without building it (nor importing torch)."""
    if is_tiny(name) and value.strip().lower() in (ALL_LINEAR, *AUTO):
        return
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, LlamaForCausalLM

    from fedtune.models.loading import _from_pretrained, tiny_config, tiny_tokenizer

    with torch.device("meta"):
        if is_tiny(name):
            skeleton = LlamaForCausalLM(tiny_config(len(tiny_tokenizer())))
        else:
            config = _from_pretrained(AutoConfig.from_pretrained, name, "config")
            skeleton = AutoModelForCausalLM.from_config(config)
    lora_targets(value, skeleton)
