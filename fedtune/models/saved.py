"""Loading what a run saved: a Hugging Face model folder, or a peft adapter folder merged into
its base. Each algorithm's ``load_result`` (:class:`fedtune.algorithms.base.Algorithm`) picks
the folder; ``fedtune generate`` and ``fedtune export`` ask it."""

from __future__ import annotations

from pathlib import Path

import torch

from fedtune.errors import ConfigError


def _tokenizer(folder: Path | str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model_folder(folder: Path) -> tuple[torch.nn.Module, object]:
    """(model, tokenizer) of a saved Hugging Face model folder, in eval mode."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder).eval(), _tokenizer(folder)


def load_adapter_folder(folder: Path) -> tuple[torch.nn.Module, object]:
    """(base model with the peft adapter merged in, tokenizer) of a saved adapter folder; a
    soft prompt (prompt tuning) has no weights to merge, so its PeftModel comes back as is."""
    from peft import AutoPeftModelForCausalLM, PeftModel

    from fedtune.models.quantize import adapter_base

    base = adapter_base(folder)  # trained on a quantised base: merge into its dequantised copy
    model = (AutoPeftModelForCausalLM.from_pretrained(folder) if base is None
             else PeftModel.from_pretrained(base, folder))
    if not model.active_peft_config.is_prompt_learning:
        model = model.merge_and_unload()
    return model.eval(), _tokenizer(folder)


def require_merged(model: torch.nn.Module, tokenizer, run: str) -> tuple[torch.nn.Module, object]:
    """(model, tokenizer) if the model is plain weights; a soft prompt (a PeftModel, which
    :func:`load_adapter_folder` cannot merge) is one sentence."""
    if hasattr(model, "peft_config"):
        raise ConfigError(f"'{run}' trained a soft prompt (peft-method='prompt-tuning'), which "
                          "cannot be merged into the model's weights; load its adapter folder "
                          "with PeftModel.from_pretrained instead.")
    return model, tokenizer
