"""The built-in `tiny` preset and a real pretrained model from ../shared."""

import torch

from client_app.app import app as client_app
from fedtune.models.loading import build_tiny, choose_placement, load_model, load_tokenizer
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
