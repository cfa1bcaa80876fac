"""The adapter state FedIT sends (``fedtune.algorithms.fedit.adapter``): read and loaded without
asking the Hugging Face hub, and equal to what peft itself would save, less the frozen parts."""

from __future__ import annotations

import numpy as np
import peft.utils.other
import pytest
import torch
from peft import get_peft_model_state_dict

from fedtune.algorithms.fedit.adapter import (
    _frozen_keys,
    adapter_spec,
    adapter_state,
    add_adapter,
    load_adapter_state,
    trainable_keys,
)
from fedtune.algorithms.fedit.config import LoraSection
from fedtune.models.loading import build_tiny

HUB_ID = "some-owner/some-model"  # what a node's model is named when it came from the hub


def _adapter(targets: str = "all-linear"):
    model = build_tiny()
    model.config.name_or_path = model.name_or_path = HUB_ID  # as from_pretrained(HUB_ID) sets
    return add_adapter(model, LoraSection(lora_target_modules=targets), base_is_random=False)


def test_reading_and_loading_the_adapter_never_asks_the_hub(monkeypatch):
    """peft's default asked the hub whether the base's config.json exists (then read it) on
    every state read: requests to huggingface.co from every node, several a round, naming the
    model (without the fix: one recorded call per read, and this test fails)."""
    monkeypatch.delenv("HF_HUB_OFFLINE")  # online, as a user's node is; peft skips it offline
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # and nothing leaves the machine
    asked = []
    monkeypatch.setattr(peft.utils.other, "file_exists",
                        lambda repo_id, filename, **kw: asked.append((repo_id, filename)))
    model = _adapter()
    assert model.peft_config["default"].base_model_name_or_path == HUB_ID
    state = adapter_state(model)
    load_adapter_state(model, state)
    adapter_spec(model)
    trainable_keys(model)
    assert asked == []


def test_the_state_is_what_peft_saves_less_the_frozen_parts(monkeypatch):
    """With an embedding among the targets peft's default also saves the embedding's frozen
    base weight: the trainable state is the same either way, and loads back exactly."""
    model = _adapter("embed_tokens,q_proj")
    saved = get_peft_model_state_dict(model, save_embedding_layers=True)
    frozen = _frozen_keys(model, saved)
    assert frozen == {"base_model.model.model.embed_tokens.base_layer.weight"}
    state = adapter_state(model)
    assert list(state) == [k for k in saved if k not in frozen]
    assert any("lora_embedding_A" in k for k in state)
    for k, v in state.items():
        assert np.array_equal(v, saved[k].float().numpy()), k
    base = model.base_model.model.model.embed_tokens.base_layer.weight.detach().clone()
    changed = {k: v + 1 for k, v in state.items()}
    load_adapter_state(model, changed)
    for k, v in adapter_state(model).items():
        assert np.array_equal(v, changed[k]), k
    with pytest.raises(KeyError, match="missing"):
        load_adapter_state(model, dict(list(state.items())[1:]))
    assert torch.equal(model.base_model.model.model.embed_tokens.base_layer.weight, base)
