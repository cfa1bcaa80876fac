"""`fedtune simulate` end to end: the results folder, the adapter, generate and export, FedKSeed-Pro
and a non-default strategy through the real ServerApp and ClientApps on the in-process grid (no
Ray). The same command on Flower's Simulation Engine (Ray) is in tests/test_ray_engine.py."""

import json

import pytest
import torch

SMALL = (
    "local-steps=10 examples-per-client=48 eval-examples=32 client-eval-examples=8 "
    "max-new-tokens=4 fraction-train=1.0"
)
ROW_KEYS = {
    "round",
    "algorithm",
    "objective",
    "train_loss",
    "eval_loss",
    "exact_match",
    "bytes_down_per_client",
    "bytes_up_per_client",
    "clients",
    "seconds",
}


def fedtune_here(*args) -> None:
    """``fedtune ARGS`` in this process (generate, export: no engine); exit 0 expected."""
    from fedtune.cli import main

    assert main(list(args)) == 0


def simulate_here(*args) -> None:
    """``fedtune simulate ARGS`` on the in-process grid (tests/inprocess_grid.py)."""
    from tests.inprocess_grid import simulate_in_process

    assert simulate_in_process(list(args)) == 0


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    simulate_here("--num-clients", "3", "--rounds", "2", "--output-dir", str(out), "--name",
                  "e2e", "--run-config", SMALL)
    (run,) = out.glob("e2e-*")
    return run


def check_results_folder(run_dir) -> None:
    assert json.loads((run_dir / "config.json").read_text())["train"]["local_steps"] == 10
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 1, 2]
    for row in rows:
        assert ROW_KEYS <= set(row)
    assert rows[0]["bytes_down_per_client"] == 0 and rows[0]["train_loss"] is None
    assert all(r["clients"] == 3 and r["bytes_up_per_client"] > 100_000 for r in rows[1:])
    assert rows[-1]["eval_loss"] < rows[0]["eval_loss"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds"] == 2 and summary["final"]["round"] == 2
    assert (run_dir / "metrics.png").stat().st_size > 10_000


def test_results_folder_follows_the_contract(run_dir):
    check_results_folder(run_dir)


def test_adapter_loads_with_peft_and_gives_the_reported_loss(run_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fedtune.data.synthetic import eval_examples
    from fedtune.data.tokenize import encode_examples
    from fedtune.eval.loss import heldout_loss

    base_ref = json.loads((run_dir / "adapter" / "fedtune.json").read_text())["base_model"]
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base_ref), run_dir / "adapter"
    )
    tok = AutoTokenizer.from_pretrained(run_dir / "adapter")
    data = encode_examples(tok, eval_examples(32, 0), 128)
    loss = heldout_loss(model, data, tok.pad_token_id)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert loss == pytest.approx(rows[-1]["eval_loss"], rel=1e-4)


def test_generate_and_export_match_the_adapter(run_dir, tmp_path, capsys):
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fedtune.data.example import Example
    from fedtune.data.template import render_prompt
    from fedtune.eval.generate import generate

    peft_model = AutoPeftModelForCausalLM.from_pretrained(run_dir / "adapter").eval()
    tok = AutoTokenizer.from_pretrained(run_dir / "adapter")
    prompt = render_prompt(Example("Is the number even or odd?", "", "12"))
    want = generate(peft_model, tok, [prompt], max_new_tokens=4)[0].strip()
    capsys.readouterr()
    fedtune_here("generate", str(run_dir), "--prompt", "Is the number even or odd?", "--input",
                 "12", "--max-new-tokens", "4")
    assert capsys.readouterr().out.strip() == want

    fedtune_here("export", str(run_dir), str(tmp_path / "merged"))
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    assert not any("lora" in name for name, _ in merged.named_parameters())
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, peft_model(ids).logits, atol=1e-4, rtol=1e-4)


@pytest.mark.slow  # full-parameter: save-full-model, export replays every round
def test_fedkseed_pro_runs_through_the_command(tmp_path, capsys):
    simulate_here("--algorithm", "fedkseed-pro", "--num-clients", "3", "--rounds", "2",
                  "--output-dir", str(tmp_path), "--run-config",
                  SMALL + " zo-seeds=512 zo-steps=20 batch-size=2 save-full-model=true")
    assert "round   2/2" in capsys.readouterr().out
    (run,) = tmp_path.glob("fedkseed-pro-sft-*")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["eval_loss"] < rows[0]["eval_loss"]
    # 512 float32 (npy buffer) + 512 importance bytes down; 20 x (uint16 + float32) up
    assert rows[1]["payload_up_per_client"] == 20 * 6
    assert rows[1]["payload_down_per_client"] == 512 * 4 + 128 + 512
    assert (run / "fedkseed-state.npz").exists() and not (run / "zo-cache").exists()
    from transformers import AutoModelForCausalLM

    saved = AutoModelForCausalLM.from_pretrained(run / "model")
    fedtune_here("export", str(run), str(tmp_path / "exported"))
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "exported")
    for (name, a), (_, b) in zip(saved.named_parameters(), exported.named_parameters(),
                                 strict=True):
        assert torch.equal(a, b), name  # export replays the same canonical model
    base = AutoModelForCausalLM.from_pretrained(run / "base-model")
    assert not torch.equal(base.lm_head.weight, exported.lm_head.weight)


def test_a_non_default_strategy_runs_through_the_command(tmp_path, capsys):
    simulate_here("--num-clients", "3", "--rounds", "2", "--output-dir", str(tmp_path),
                  "--run-config", SMALL + " strategy='fedadam' server-lr=0.01")
    assert "round   2/2" in capsys.readouterr().out
    (run,) = tmp_path.glob("fedit-sft-*")
    assert json.loads((run / "config.json").read_text())["strategy"]["strategy"] == "fedadam"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["eval_loss"] < rows[0]["eval_loss"]
