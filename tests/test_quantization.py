"""Quantised bases (issue #29 item 2, ``quantization``): bitsandbytes' nf4, fp4 and int8 layers
under FedIT's adapter, on CPU; the server evaluates on the quantised base the clients train on,
``fedtune export`` merges into the full-precision base, resume is exact, and what cannot run
on a quantised base is refused in one sentence."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch

from fedtune.algorithms import resolve
from fedtune.compat import Incompatible
from fedtune.config import Config, ConfigError
from fedtune.models.quantize import is_quantized
from tests.conftest import small_config

pytest.importorskip("bitsandbytes")

#: a short federated run: 2 nodes, 3 rounds (crash-resume needs one before and two after)
QUICK = {"num-server-rounds": 3, "local-steps": 2, "examples-per-client": 16,
         "eval-examples": 8, "client-eval-examples": 4, "max-new-tokens": 2,
         "fraction-train": 1.0, "fraction-evaluate": 0.0, "min-available-nodes": 2,
         "lora-r": 4, "quantization": "nf4"}
BNB_LAYER = {"nf4": "Linear4bit", "fp4": "Linear4bit", "int8": "Linear8bitLt"}


def _peft_method_key() -> bool:
    from dataclasses import fields

    from fedtune.algorithms.fedit.config import LoraSection

    return "peft_method" in {f.name for f in fields(LoraSection)}


# ---- the config section and the compatibility table ------------------------------------------
@pytest.mark.parametrize("keys, says", [
    ({"quantization": "nf8"}, "quantization='nf8' is unknown; use one of none, nf4, fp4, int8."),
    ({"quantization": "int8", "quant-compute-dtype": "bfloat16"}, "use quantization nf4 or fp4"),
    ({"quant-double-quant": False}, "applies to 4-bit layers, but quantization='none'"),
])
def test_the_section_refuses_in_one_sentence(keys, says):
    with pytest.raises(ConfigError) as err:
        Config.from_flat(keys)
    assert says in str(err.value) and "\n" not in str(err.value)


def test_without_bitsandbytes_the_cli_says_how_to_install_it(monkeypatch, capsys, tmp_path):
    from fedtune.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    argv = ["simulate", "--output-dir", str(tmp_path), "--run-config", "quantization='nf4'"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("fedtune: quantization='nf4' needs bitsandbytes, which is not installed; run "
                   "pip install -e \".[quantization]\" (or use quantization='none').")


REFUSED = [
    ({"algorithm": "fedkseed"}, "fedkseed perturbs or trains every base weight"),
    ({"algorithm": "fedkseed-pro", "quantization": "int8"}, "fedkseed-pro perturbs"),
    ({"algorithm": "ferret"}, "ferret perturbs"),
    ({"algorithm": "full-ft"}, "full-ft perturbs"),
    ({"lora-aggregation": "flora"}, "lora-aggregation='flora' writes each round's merged"),
    ({"lora-aggregation": "fedex"}, "lora-aggregation='fedex' writes"),
]
METHOD_REFUSED = [
    ({"peft-method": "loha"}, "peft-method='loha' cannot train on a base quantised as nf4"),
    ({"peft-method": "lokr", "quantization": "fp4"}, "peft-method='lokr' cannot train"),
    ({"peft-method": "hra", "quantization": "int8"}, "peft-method='hra' cannot train"),
    ({"lora-use-dora": True, "quantization": "int8"}, "lora-use-dora cannot run with"),
    ({"lora-init": "pissa"}, "lora-init='pissa' rewrites the base weights"),
    ({"lora-init": "olora", "quantization": "int8"}, "lora-init='olora' rewrites"),
]


@pytest.mark.parametrize("keys, says", REFUSED + [
    pytest.param(k, s, marks=pytest.mark.skipif(not _peft_method_key(), reason="no peft-method"))
    for k, s in METHOD_REFUSED])
def test_what_cannot_run_on_a_quantised_base_is_refused(keys, says):
    with pytest.raises(Incompatible) as err:
        resolve(Config.from_flat({"quantization": "nf4", "min-train-nodes": 2, **keys}))
    message = str(err.value)
    assert says in message and "\n" not in message and message.endswith("."), message
    assert err.value.rule.settings[0] == "quantization"


@pytest.mark.parametrize("keys", [
    {}, {"algorithm": "local"}, {"algorithm": "centralized"}, {"objective": "dpo"},
    {"lora-aggregation": "ffa"}, {"lora-aggregation": "fedsa"}, {"quantization": "int8"},
])
def test_fedit_its_baselines_and_dpo_run_on_a_quantised_base(keys):
    resolve(Config.from_flat({"quantization": "nf4", "min-train-nodes": 2, **keys}))


@pytest.mark.skipif(not _peft_method_key(), reason="the lead's peft-method key has not landed")
@pytest.mark.parametrize("method", ["vera", "ia3", "prompt-tuning", "oft", "fourierft",
                                    "ln-tuning"])
def test_these_peft_methods_train_on_nf4(method, one_thread):
    """Each method the table lets through builds on an nf4 base and learns in a few steps."""
    _trains(small_config(**{"quantization": "nf4", "peft-method": method, "lora-r": 4}))


# ---- building, training, serving, exporting --------------------------------------------------
def _trains(cfg, **settings) -> torch.nn.Module:
    """peft_model_for(cfg) runs a few SFT steps on parity examples and lowers their loss."""
    from fedtune.algorithms.fedit.model import peft_model_for
    from fedtune.data.synthetic import make_examples
    from fedtune.data.tokenize import encode_examples
    from fedtune.eval.loss import heldout_loss
    from fedtune.train.local import SFTSettings, train_round

    model, tok = peft_model_for(cfg)
    data = encode_examples(tok, make_examples("parity", 8, seed=0), 64)
    before = heldout_loss(model, data, tok.pad_token_id, 8)
    stats = train_round(model, data, SFTSettings(steps=4, batch_size=4, lr=1e-2, **settings),
                        tok.pad_token_id, (0, 1, "client-0000"))
    assert np.isfinite(stats.train_loss)
    assert heldout_loss(model, data, tok.pad_token_id, 8) < before
    return model


@pytest.mark.parametrize("quant", ["nf4", "fp4", "int8"])
def test_each_quantisation_builds_and_trains_the_adapter(quant, one_thread):
    from fedtune.algorithms.fedit.adapter import adapter_spec
    from fedtune.algorithms.fedit.model import peft_model_for

    cfg = small_config(quantization=quant, **{"lora-r": 4})
    model = _trains(cfg, gradient_checkpointing=quant == "nf4")  # checkpointing on one of them
    q_proj = model.get_base_model().model.layers[0].self_attn.q_proj
    assert type(q_proj.get_base_layer()).__name__ == BNB_LAYER[quant] and is_quantized(model)
    # the adapter (what goes on the wire) is the one an unquantised base has: keys and shapes
    plain, _ = peft_model_for(small_config(**{"lora-r": 4}))
    assert not is_quantized(plain)
    assert adapter_spec(model) == adapter_spec(plain)
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("quant", ["nf4", "fp4"])
def test_an_evaluation_is_the_same_on_every_cpu(quant, monkeypatch, one_thread):
    """On a CPU with AVX512-BF16 bitsandbytes repacks 4-bit weights for a bfloat16 kernel in
    eval mode without grad (failing for tiny's 352-wide down_proj); fedtune keeps the portable
    path, so an evaluation equals the same forward with grad on, whatever the CPU."""
    import bitsandbytes.nn.modules as bnb_modules

    from fedtune.models.loading import choose_placement
    from fedtune.models.quantize import Quantization, load_quantized

    monkeypatch.setattr(bnb_modules, "has_avx512bf16", lambda: True)  # such a CPU, here
    model = load_quantized("tiny", choose_placement("cpu", "float32"), Quantization(quant))
    ids = torch.arange(3, 19).reshape(2, 8)
    with torch.no_grad():
        evaluated = model(ids).logits
    with torch.enable_grad():
        portable = model(ids).logits.detach()
    assert torch.equal(evaluated, portable)


@pytest.fixture(scope="module")
def qlora_run(tmp_path_factory):
    """A 3-round nf4 FedIT run on the real ServerApp over two in-process ClientApps."""
    from flwr.supercore.task_identity import TaskIdentity

    from tests.test_checkpoint import run

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1  # (conftest's
    # task_identity fixture is function-scoped: it comes after this module-scoped one)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield run(tmp_path_factory.mktemp("qlora"), "whole", QUICK)
    finally:
        torch.set_num_threads(before)


def test_a_qlora_run_trains_and_the_server_evaluates_on_the_quantised_base(qlora_run):
    from fedtune.algorithms.fedit.server import FedITServer
    from tests.test_checkpoint import rows

    metrics = rows(qlora_run)
    assert [r["round"] for r in metrics] == [0, 1, 2, 3] and not any(
        r.get("skipped") for r in metrics)  # every reply had the spec's keys and shapes
    assert metrics[-1]["eval_loss"] < metrics[0]["eval_loss"]
    assert metrics[1]["bytes_up_per_client"] > 0
    cfg = small_config(**{**QUICK, "run-dir": str(qlora_run)})
    server = FedITServer(cfg)
    assert is_quantized(server.model)  # the clients' cached model, shared in this process
    initial = server.initial_arrays()
    assert server.evaluate(initial)["eval_loss"] == metrics[0]["eval_loss"]
    plain = FedITServer(small_config(**{**QUICK, "quantization": "none"}))
    assert plain.evaluate(initial)["eval_loss"] != metrics[0]["eval_loss"]


def test_export_merges_into_the_dequantised_base_in_full_precision(qlora_run, tmp_path):
    """``fedtune export`` gives a plain float32 model whose weights are the quantised base's,
    dequantised, plus s B A: the model the server evaluated, not W0 + s B A."""
    from safetensors.numpy import load_file
    from transformers import AutoModelForCausalLM

    from fedtune.algorithms.fedit.server import FedITServer
    from fedtune.cli import main
    from fedtune.eval.central import CentralEvaluator
    from fedtune.models.loading import build_tiny
    from fedtune.models.quantize import Quantization, dequantized

    saved = json.loads((qlora_run / "adapter" / "fedtune.json").read_text())
    assert saved["quantization"] == {"kind": "nf4", "compute_dtype": "auto",
                                     "double_quant": True}
    assert main(["export", str(qlora_run), str(tmp_path / "merged")]) == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    assert not is_quantized(merged)
    layer = merged.model.layers[0].self_attn.q_proj
    assert type(layer) is torch.nn.Linear and layer.weight.dtype == torch.float32
    adapter = load_file(qlora_run / "adapter" / "adapter_model.safetensors")
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    a, b = adapter[f"{prefix}.lora_A.weight"], adapter[f"{prefix}.lora_B.weight"]
    assert np.abs(b).sum() > 0
    scale = small_config(**QUICK).lora.scale
    w_q = dequantized("tiny", Quantization("nf4")).model.layers[0].self_attn.q_proj.weight
    w0 = build_tiny().model.layers[0].self_attn.q_proj.weight.detach().numpy()
    np.testing.assert_allclose(layer.weight.detach().numpy(),
                               w_q.detach().numpy() + scale * b @ a, atol=1e-6)
    assert np.abs(w_q.detach().numpy() - w0).max() > 1e-3  # nf4 moved the weights
    # the exported model scores what the server reported for the final round
    cfg = small_config(**{**QUICK, "run-dir": str(qlora_run)})
    server = FedITServer(cfg)
    final = json.loads((qlora_run / "metrics.jsonl").read_text().splitlines()[-1])
    exported = CentralEvaluator(cfg, server.tokenizer)(merged)["eval_loss"]
    assert exported == pytest.approx(final["eval_loss"], rel=1e-5)


def test_exporting_a_qlora_run_without_bitsandbytes_says_how_to_install_it(
        qlora_run, tmp_path, monkeypatch, capsys):
    from fedtune.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    assert main(["export", str(qlora_run), str(tmp_path / "merged")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fedtune: The adapter in ") and err.endswith(
        'which needs bitsandbytes; run pip install -e ".[quantization]".'), err


def test_a_resumed_qlora_run_equals_the_uninterrupted_one(qlora_run, tmp_path, one_thread):
    from fedtune.checkpoint import load_checkpoint
    from tests.test_checkpoint import Crash, final_state, rows, run

    with pytest.raises(Crash):
        run(tmp_path, "crashed", QUICK, crash_in_round=2)
    assert load_checkpoint(tmp_path / "crashed").round == 1
    resumed = run(tmp_path, "crashed", QUICK, resume=True)
    assert final_state(resumed) == final_state(qlora_run)
    assert rows(resumed) == rows(qlora_run)


def test_dpo_references_of_a_quantised_and_a_plain_base_are_kept_apart(one_thread):
    """DPO's reference log-probs (cached per process by the reference's identity) come from the
    base the run trains on: an nf4 run after an unquantised one in the same process does not
    reuse the unquantised reference, and vice versa."""
    from fedtune.algorithms.fedit.dpo import heldout_pairs
    from fedtune.algorithms.fedit.model import peft_model_for
    from fedtune.train.dpo import pair_logps

    refs = {}
    for quant in ("none", "nf4", "none"):
        cfg = small_config(**{"objective": "dpo", "eval-examples": 8, "quantization": quant,
                              "lora-r": 4})
        model, tok = peft_model_for(cfg)
        pairs = heldout_pairs(cfg, model, tok)
        with model.disable_adapter():
            direct = pair_logps(model, pairs.data, tok.pad_token_id, 8)
        np.testing.assert_array_equal(pairs.reference, direct)
        refs.setdefault(quant, pairs.reference)
    assert not np.array_equal(refs["none"], refs["nf4"])
