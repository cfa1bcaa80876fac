"""The adapter state FedIT sends (``fedtune.algorithms.fedit.adapter``): read, loaded and saved
without asking the Hugging Face hub, and equal to what peft itself would save, less the frozen
parts; and a whole run on a model from the hub asks the hub nothing once the model is loaded."""

from __future__ import annotations

import importlib
import sys

import huggingface_hub
import numpy as np
import pytest
import torch
from flwr.app import Context, RecordDict
from huggingface_hub.utils import get_session, set_client_factory
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
from fedtune.models import loading
from fedtune.models.loading import build_tiny

HUB_ID = "some-owner/some-model"  # what a node's model is named when it came from the hub
# each algorithm with a model of its own, and what keeps its run small
SMALL = {"fedit": {}, "fedkseed": {"zo-seeds": 64, "zo-steps": 2}, "ferret": {"ferret-seeds": 8}}


@pytest.fixture
def hub_requests(monkeypatch):
    """Online, as a user's node is (the tests run offline), with every request huggingface_hub
    makes recorded and answered 404 (no such file) by its own HTTP client's mock transport, so
    nothing leaves the machine."""
    seen: list[str] = []
    http = sys.modules[type(get_session()).__module__.split(".")[0]]  # httpx or httpx2

    def answer(request):
        seen.append(f"{request.method} {request.url}")
        return http.Response(404)

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # peft reads the variable
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # the hub, at import
    factory = huggingface_hub.utils._http._GLOBAL_CLIENT_FACTORY
    set_client_factory(lambda: http.Client(transport=http.MockTransport(answer)))
    yield seen
    set_client_factory(factory)


def _adapter(targets: str = "all-linear"):
    model = build_tiny()
    model.config.name_or_path = model.name_or_path = HUB_ID  # as from_pretrained(HUB_ID) sets
    return add_adapter(model, LoraSection(lora_target_modules=targets), base_is_random=False)


def test_reading_and_loading_the_adapter_never_asks_the_hub(hub_requests):
    """peft's default asked the hub whether the base's config.json exists (then read it) on
    every state read: requests to huggingface.co from every node, several a round, naming the
    model (without the fix: one request per read, and this test fails)."""
    model = _adapter()
    assert model.peft_config["default"].base_model_name_or_path == HUB_ID
    state = adapter_state(model)
    load_adapter_state(model, state)
    adapter_spec(model)
    trainable_keys(model)
    assert hub_requests == []


def test_the_state_is_what_peft_saves_less_the_frozen_parts():
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


@pytest.mark.parametrize("targets", ["q_proj", "embed_tokens,q_proj"])
def test_the_saved_adapter_asks_the_hub_nothing_and_loads_back(targets, hub_requests, tmp_path):
    """A run's last save (FedIT's adapter folder) asks the hub nothing either (peft's default,
    without an embedding among the targets: 1 request), and the folder loads back onto the base
    (with one: without the base embedding's copy, which the base has) as the same adapter."""
    from peft import PeftModel

    from fedtune.algorithms.fedit.adapter import save_adapter

    model = _adapter(targets)
    trained = {k: v + 0.25 for k, v in adapter_state(model).items()}
    load_adapter_state(model, trained)
    save_adapter(model, tmp_path)
    assert hub_requests == []
    back = PeftModel.from_pretrained(build_tiny(), tmp_path)
    for k, v in adapter_state(back).items():
        assert np.array_equal(v, trained[k]), k


@pytest.mark.parametrize("algorithm", SMALL)
def test_a_run_on_a_hub_model_asks_the_hub_nothing(algorithm, hub_requests, monkeypatch,
                                                   tmp_path, one_thread):
    """Every model of a 1-round run named by a hub id (as ``from_pretrained`` names it): the
    round code sends the hub no request, so nothing tells it which model the nodes train, or
    when (FedIT without the fix above: 11 requests in this run, 16 in two rounds)."""
    from client_app.app import app as client_app
    from server_app.app import main as server_main
    from tests.inprocess_grid import InProcessGrid

    load, loaded = loading.load_model, []

    def from_hub(name, placement, quantization=None):
        model = load(name, placement, quantization)
        model.config.name_or_path = model.name_or_path = HUB_ID
        loaded.append(name)
        return model

    # each algorithm's process-wide model cache: emptied, so the run loads its models through
    # from_hub, and emptied again, so no later test gets a renamed one
    modules = [importlib.import_module(f"fedtune.algorithms.{a}.model") for a in SMALL]
    for module in modules:
        monkeypatch.setattr(module, "load_model", from_hub)
        module._cached.cache_clear()
    flat = {"algorithm": algorithm, "num-server-rounds": 1, "local-steps": 1, "batch-size": 2,
            "examples-per-client": 4, "eval-examples": 2, "client-eval-examples": 2,
            "fraction-evaluate": 1.0, "max-new-tokens": 1, "run-dir": str(tmp_path),
            **SMALL[algorithm]}
    try:
        server_main(InProcessGrid(client_app, 2, flat),
                    Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                            run_config=flat))
    finally:
        for module in modules:
            module._cached.cache_clear()
    assert loaded  # the run's models were the renamed ones
    assert hub_requests == []
