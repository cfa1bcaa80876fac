"""The built-in `tiny` preset and a real pretrained model from ../shared."""

import pytest
import torch

from client_app.app import app as client_app
from fedtune.errors import ConfigError
from fedtune.models.loading import (
    ModelError,
    build_tiny,
    choose_placement,
    load_model,
    load_tokenizer,
)
from tests.conftest import run_loop, small_config
from tests.inprocess_grid import InProcessGrid


def test_tiny_is_deterministic_and_needs_no_files():
    a, b = build_tiny(), build_tiny()
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert torch.equal(p, q), name
    tok = load_tokenizer("tiny")
    assert tok.pad_token_id is not None and tok.eos_token_id != tok.pad_token_id
    text = "Is the number even or odd? 123"
    assert tok.decode(tok(text)["input_ids"]) == text


def test_placement_defaults_to_cpu_float32_without_gpu():
    p = choose_placement()
    if not torch.cuda.is_available():
        assert (p.device.type, p.dtype) == ("cpu", torch.float32)
    assert choose_placement("cpu", "bfloat16").dtype == torch.bfloat16


def test_stories260k_trains_in_a_federated_round(stories_path):
    tok = load_tokenizer(str(stories_path))
    assert tok.pad_token_id == tok.eos_token_id  # stories260k has no pad token of its own
    model = load_model(str(stories_path), choose_placement("cpu", "float32"))
    assert model.config.tie_word_embeddings
    cfg = small_config(
        model=str(stories_path), **{"fraction-train": 1.0, "fraction-evaluate": 0.0, "lr": 5e-3}
    )
    grid = InProcessGrid(client_app, 2, cfg.to_flat())
    rows = []
    run_loop(grid, cfg, rows.append)
    assert rows[-1]["clients"] == 2
    assert rows[-1]["eval_loss"] < rows[0]["eval_loss"]


CPU = choose_placement("cpu", "float32")


def _both(name):
    """The errors of the tokenizer and the model loader for ``name`` (FedIT loads the
    tokenizer first; FedKSeed only the model)."""
    load_tokenizer.cache_clear()
    errors = []
    for load in (lambda: load_tokenizer(name), lambda: load_model(name, CPU)):
        with pytest.raises(ModelError) as info:
            load()
        errors.append(str(info.value))
    return errors


def _one_sentence(message):
    assert "\n" not in message and message.endswith(".") and "Traceback" not in message


def test_a_model_path_that_does_not_exist_is_one_sentence(tmp_path):
    for name in (str(tmp_path / "missing"), "../nowhere/model", "./stories"):
        for message in _both(name):
            assert message == (f"Model folder '{name}' does not exist; fix the path, or pass "
                               "'tiny' or a Hugging Face hub id (owner/name).")
    (tmp_path / "weights.bin").write_bytes(b"x")
    for message in _both(str(tmp_path / "weights.bin")):
        assert "is a file, not a folder" in message
    for message in _both(str(tmp_path)):
        assert message.startswith(f"Model folder '{tmp_path}' has no config.json;")
    assert isinstance(ModelError("x"), ConfigError)  # the CLI prints it as one line


def test_a_model_folder_without_weights_or_tokenizer_names_what_is_missing(stories_path,
                                                                           tmp_path):
    (tmp_path / "config.json").write_text((stories_path / "config.json").read_text())
    tokenizer, model = _both(str(tmp_path))
    for message in (tokenizer, model):
        _one_sentence(message)
    assert tokenizer.startswith(f"Could not load the tokenizer of the model folder '{tmp_path}'")
    assert model.startswith(f"Could not load the model of the model folder '{tmp_path}'")
    assert "the folder needs config.json, the weights and the tokenizer files" in model


def test_a_hub_id_that_cannot_be_downloaded_is_one_sentence(monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def offline(name, **kwargs):
        raise OSError(f"We couldn't connect to 'https://huggingface.co' to load the files.\n"
                      f"Check your internet connection for {name}.")

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", offline)
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", offline)
    for message, what in zip(_both("acme/missing-model"), ("tokenizer", "model"), strict=True):
        _one_sentence(message)
        assert message == (f"Could not load the {what} of 'acme/missing-model', which is no "
                           "local folder, from the Hugging Face hub (We couldn't connect to "
                           "'https://huggingface.co' to load the files); fix the path or the "
                           "hub id, or download the model elsewhere and pass its folder.")
