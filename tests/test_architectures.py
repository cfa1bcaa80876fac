"""Any Hugging Face causal LM: tiny random GPT-2 (Conv1D layers, tied head), GPT-NeoX (fused
``query_key_value``, rotary) and Qwen2 (grouped-query attention, tied head) models built in code
and saved with ``save_pretrained``, each through a FedIT round, a FedKSeed round and a DPO round
of the real ServerApp and ClientApp (in-process grid), and ``fedtune export``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Context, RecordDict
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from client_app.app import app as client_app
from fedtune.algorithms.fedit.adapter import add_adapter
from fedtune.algorithms.fedit.config import LoraSection
from fedtune.cli import main as cli
from fedtune.models.loading import ModelError, tiny_tokenizer
from fedtune.models.targets import linear_layer_names, lora_targets
from server_app.app import main as server_main
from tests.inprocess_grid import InProcessGrid

ARCHS = ("gpt2", "gpt_neox", "qwen2")
VOCAB = 512  # padded above the tokenizer's 460 tokens (461 as Qwen2Tokenizer), as real models are
#: what ``all-linear`` adapts (the output head never), and peft's table for ``auto``
LAYERS = {  # in the order the model first uses them
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "gpt_neox": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}
ALL_LINEAR = {arch: set(names) for arch, names in LAYERS.items()}
AUTO = {"gpt2": ["c_attn"], "gpt_neox": ["query_key_value"], "qwen2": ["q_proj", "v_proj"]}
SMALL = {"num-server-rounds": 1, "local-steps": 2, "batch-size": 2, "examples-per-client": 8,
         "eval-examples": 4, "client-eval-examples": 2, "max-new-tokens": 2, "lr": 1e-2,
         "min-train-nodes": 2, "min-available-nodes": 2, "fraction-train": 1.0,
         "fraction-evaluate": 0.0}


#: the special tokens of each family's own tokenizer: GPT-2 (and Pythia) have no pad token and
#: BOS = EOS; Qwen2 has no BOS; the Llama-style tiny preset has all three
SPECIALS = {"gpt2": {"bos_token": "</s>", "eos_token": "</s>"},
            "gpt_neox": {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"},
            "qwen2": {"eos_token": "</s>", "pad_token": "<pad>"}}


def tokenizer(arch: str) -> PreTrainedTokenizerFast:
    """The `tiny` preset's byte-level BPE with ``arch``'s kind of special tokens."""
    return PreTrainedTokenizerFast(tokenizer_object=tiny_tokenizer().backend_tokenizer,
                                   **SPECIALS[arch])


def build(arch: str) -> PreTrainedModel:
    """A random model of ``arch`` with 2 layers of width 64 (about 150K parameters)."""
    tok = tokenizer(arch)
    ids = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
           "pad_token_id": tok.pad_token_id}
    torch.manual_seed(0)
    if arch == "gpt2":
        return GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_positions=256, n_embd=64, n_layer=2,
                                          n_head=4, **ids))
    if arch == "gpt_neox":
        return GPTNeoXForCausalLM(GPTNeoXConfig(
            vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=256, **ids))
    return Qwen2ForCausalLM(Qwen2Config(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        tie_word_embeddings=True, **ids))


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors gain nothing from threads on a shared 2-core box."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module", params=ARCHS)
def arch(request, tmp_path_factory) -> tuple[str, Path]:
    """(architecture, its model folder: config, safetensors weights, tokenizer files)."""
    folder = tmp_path_factory.mktemp(request.param)
    build(request.param).save_pretrained(folder)
    tokenizer(request.param).save_pretrained(folder)
    return request.param, folder


def run(folder: Path, run_dir: Path, **overrides) -> list[dict]:
    """One round of the real ServerApp over two ClientApps; the metrics rows."""
    flat = {**SMALL, "model": str(folder), "run-dir": str(run_dir), **overrides}
    grid = InProcessGrid(client_app, 2, flat)
    server_main(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                              run_config=flat))
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]


def export(run_dir: Path) -> tuple[PreTrainedModel, object]:
    """``fedtune export RUN OUT``, then the folder as a user loads it."""
    out = run_dir / "exported"
    assert cli(["export", str(run_dir), str(out)]) == 0
    return AutoModelForCausalLM.from_pretrained(out).eval(), AutoTokenizer.from_pretrained(out)


def generates(model: PreTrainedModel, tok) -> None:
    """Greedy answers exist, and left padding does not change them (positions follow the
    attention mask on every architecture)."""
    from fedtune.eval.generate import generate

    prompts = ["### Instruction:\nGive the first word.\n\n### Response:\n", "Is 4 even", "x"]
    batched = generate(model, tok, prompts, max_new_tokens=4, batch_size=3)
    assert batched == [generate(model, tok, [p], max_new_tokens=4)[0] for p in prompts]
    ids = tok("Is 12 even or odd?", return_tensors="pt")["input_ids"]
    out = model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] > ids.shape[1]


def adapted(model) -> set[str]:
    from peft.tuners.lora import LoraLayer

    return {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, LoraLayer)}


def test_lora_targets_are_found_per_architecture(arch):
    name, folder = arch
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert adapted(add_adapter(model, LoraSection())) == ALL_LINEAR[name]  # the default
    model = AutoModelForCausalLM.from_pretrained(folder)
    layers = linear_layer_names(model)
    assert layers == LAYERS[name] and lora_targets("auto", model) == AUTO[name]
    wrapped = add_adapter(model, LoraSection(lora_target_modules="",
                                             lora_modules_to_save="lm_head"))
    assert adapted(wrapped) == set(AUTO[name])
    assert linear_layer_names(wrapped.get_base_model()) == layers  # peft's wrappers see through
    with pytest.raises(ModelError) as err:
        lora_targets("q_proj,c_attn,nope", wrapped.get_base_model())
    missing = ", ".join(t for t in ("q_proj", "c_attn") if t not in ALL_LINEAR[name])
    assert str(err.value) == (
        f"lora-target-modules='q_proj,c_attn,nope' names {missing}, nope, which the {name} model "
        f"does not have; its linear layers are {', '.join(layers)} (or set "
        "lora-target-modules='all-linear').")


def test_a_model_type_without_known_targets_names_the_key():
    model = Phi3ForCausalLM(Phi3Config(vocab_size=64, hidden_size=32, intermediate_size=64,
                                       num_hidden_layers=1, num_attention_heads=2,
                                       num_key_value_heads=2, pad_token_id=0, bos_token_id=1,
                                       eos_token_id=2))
    with pytest.raises(ModelError) as err:
        add_adapter(model, LoraSection(lora_target_modules="auto"))
    assert str(err.value) == (
        "peft has no default LoRA target modules for model type 'phi3'; set "
        "lora-target-modules='all-linear' or a comma list of its layers (o_proj, qkv_proj, "
        "gate_up_proj, down_proj).")
    assert adapted(add_adapter(model, LoraSection())) == {"qkv_proj", "o_proj", "gate_up_proj",
                                                        "down_proj"}


def test_fedit_round_and_export(arch, tmp_path):
    """The adapter learns; the export merges it (GPT-2's Conv1D transposed, fan_in_fan_out)
    into a plain HF folder that gives the server's held-out loss and the adapter's logits."""
    from peft import AutoPeftModelForCausalLM

    from fedtune.data.synthetic import eval_examples
    from fedtune.data.tokenize import encode_examples
    from fedtune.eval.loss import heldout_loss

    name, folder = arch
    rows = run(folder, tmp_path / "run")
    assert rows[1]["clients"] == 2 and rows[1]["eval_loss"] < rows[0]["eval_loss"] - 0.1
    merged, tok = export(tmp_path / "run")
    assert type(merged).__name__ == type(build(name)).__name__
    assert not any("lora" in n for n, _ in merged.named_parameters())
    data = encode_examples(tok, eval_examples(SMALL["eval-examples"], 0), 128)
    assert heldout_loss(merged, data, tok.pad_token_id) == pytest.approx(rows[1]["eval_loss"],
                                                                       rel=1e-4)
    peft_model = AutoPeftModelForCausalLM.from_pretrained(tmp_path / "run" / "adapter").eval()
    ids = tok("Is 12 even or odd?", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, peft_model(ids).logits, atol=1e-4,
                                   rtol=1e-4)
    generates(merged, tok)


def test_fedkseed_round_and_export(arch, tmp_path):
    """Every weight moves (Conv1D, fused QKV, embeddings), a tied head moves with its embedding
    and stays tied, and the export replays the server's model bit for bit."""
    name, folder = arch
    rows = run(folder, tmp_path / "run", algorithm="fedkseed", **{
        "zo-seeds": 64, "zo-steps": 4, "zo-lr": 3e-4, "save-full-model": True})
    assert rows[1]["clients"] == 2 and rows[1]["payload_up_per_client"] == 4 * 6
    assert np.isfinite(rows[1]["eval_loss"]) and rows[1]["eval_loss"] != rows[0]["eval_loss"]
    exported, tok = export(tmp_path / "run")
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "model")
    base = AutoModelForCausalLM.from_pretrained(folder)
    for (n, a), (_, b), (_, w0) in zip(saved.named_parameters(), exported.named_parameters(),
                                       base.named_parameters(), strict=True):
        assert torch.equal(a, b), n  # export replays the same canonical model
        assert not torch.equal(b, w0), n  # the perturbation covers every tensor
    head, embed = exported.get_output_embeddings().weight, exported.get_input_embeddings().weight
    assert (head.data_ptr() == embed.data_ptr()) == (name != "gpt_neox")
    generates(exported, tok)


def test_dpo_round(arch, tmp_path):
    """FedIT DPO: the policy starts as the reference (adapter disabled), and one round moves the
    server's reward margin."""
    _, folder = arch
    rows = run(folder, tmp_path / "run", objective="dpo")
    assert rows[0]["reward_margin"] == 0.0 and rows[0]["reward_accuracy"] == 0.0
    assert rows[1]["reward_margin"] != 0.0 and np.isfinite(rows[1]["train_loss"])
    assert (tmp_path / "run" / "adapter" / "adapter_config.json").exists()


def test_simulate_refuses_targets_the_model_lacks_before_any_engine(arch, tmp_path, capsys):
    """`fedtune simulate` on a folder model with another family's layer names: exit 2 and one
    sentence naming the key and the model's own layers, before Ray starts (no run folder)."""
    name, folder = arch
    wrong = "c_attn" if name != "gpt2" else "q_proj"
    code = cli(["simulate", "--model", str(folder), "--output-dir", str(tmp_path), "--run-config",
                f"lora-target-modules='{wrong}'"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and not any(tmp_path.iterdir()), err
    assert err == (f"fedtune: lora-target-modules='{wrong}' names {wrong}, which the {name} model "
                   f"does not have; its linear layers are {', '.join(LAYERS[name])} (or set "
                   "lora-target-modules='all-linear').")
