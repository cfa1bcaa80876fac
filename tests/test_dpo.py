"""DPO (Rafailov et al., 2023): the loss against TRL's own code, the fixed reference, the local
rounds of FedIT and FedKSeed."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from fedtune.data.pairs import PairSet, collate_pairs, encode_pairs
from fedtune.data.preference import PreferenceExample
from fedtune.train.dpo import DPOSettings, pair_loss
from tests.conftest import small_config

PAIRS = [
    PreferenceExample(prompt="Is 12 even or odd? ", chosen="even", rejected="odd"),
    PreferenceExample(prompt="Give the first word: cat dog", chosen="cat", rejected="dog fox"),
    PreferenceExample(prompt="What comes after 41?", chosen="42", rejected="40 or so"),
]


def _perturbed_lora_model():
    """A `tiny` LoRA model (not the process's cached one) with a nonzero adapter, so policy
    and reference differ."""
    from fedtune.algorithms.fedit.adapter import add_adapter
    from fedtune.algorithms.fedit.config import LoraSection
    from fedtune.models.loading import build_tiny, load_tokenizer

    torch.manual_seed(0)
    model = add_adapter(build_tiny(), LoraSection(lora_dropout=0.0), base_is_random=True)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return model.eval(), load_tokenizer("tiny")


@pytest.mark.parametrize("loss_type,sft_weight", [("sigmoid", 0.0), ("ipo", 0.0),
                                                  ("sigmoid", 1.0)])
def test_dpo_loss_equals_trl(tmp_path, one_thread, loss_type, sft_weight):
    """The same model, batch and reference log-probs (the base: adapter disabled) through
    TRL's DPOTrainer.compute_loss."""
    datasets = pytest.importorskip("datasets")
    trl = pytest.importorskip("trl")
    from fedtune.models.loading import build_tiny
    from fedtune.train.dpo import pair_logps

    model, tokenizer = _perturbed_lora_model()
    data = encode_pairs(tokenizer, PAIRS, 64)
    batch = collate_pairs(data.items, tokenizer.pad_token_id)
    with torch.no_grad(), model.disable_adapter():
        reference = pair_logps(model, data, tokenizer.pad_token_id)
    settings = DPOSettings(beta=0.3, loss=loss_type, sft_weight=sft_weight)
    with torch.no_grad():
        ours, _ = pair_loss(model, data, [0, 1, 2], reference, settings,
                            tokenizer.pad_token_id)
    types, weights = (["sigmoid", "sft"], [1.0, sft_weight]) if sft_weight else (
        [loss_type], None)
    args = trl.DPOConfig(output_dir=str(tmp_path), beta=0.3, loss_type=types,
                         loss_weights=weights, report_to=[], use_cpu=True,
                         per_device_train_batch_size=3, max_length=None)
    train = datasets.Dataset.from_list([{"prompt": p.prompt, "chosen": p.chosen,
                                         "rejected": p.rejected} for p in PAIRS])
    trainer = trl.DPOTrainer(model=model, ref_model=build_tiny().eval(), args=args,
                             train_dataset=train, processing_class=tokenizer)
    # The reference log-probs go in with the batch, as with TRL's precompute_ref_log_probs:
    # both sides then score the same policy on the same batch against the same reference
    # (TRL's own reference forward patches the LM head, and drifts by ~1e-3 in float32).
    trainer.precompute_ref_logps = True
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
              "completion_mask": (batch["labels"] != -100).long(),
              "ref_chosen_logps": torch.from_numpy(reference[:, 0]).float(),
              "ref_rejected_logps": torch.from_numpy(reference[:, 1]).float()}
    with torch.no_grad():
        theirs = trainer.compute_loss(trainer.model.eval(), inputs)
    assert abs(float(ours.loss) - float(theirs)) < 1e-5
    rewards = trainer._metrics["eval"]  # the model is in eval mode
    margin = float((ours.chosen_rewards - ours.rejected_rewards).mean())
    assert abs(rewards["rewards/margins"][-1] - margin) < 1e-5


def test_round_zero_policy_is_the_reference_and_the_reference_stays_fixed(one_thread):
    """FedIT: the reference log-probs of the client's examples are the same at rounds 1 and 3
    (the base with the adapter disabled) while the policy's change; at the start the policy
    is the reference, so the server sees zero margins and zero accuracy."""
    from fedtune.algorithms.fedit import client
    from fedtune.algorithms.fedit.adapter import load_adapter_state
    from fedtune.algorithms.fedit.dpo import reference_logps
    from fedtune.algorithms.fedit.model import peft_model_for
    from fedtune.algorithms.fedit.server import FedITServer
    from fedtune.node import Node, node_pairs
    from fedtune.train import dpo
    from fedtune.train.dpo import pair_logps

    cfg = small_config(objective="dpo", **{"local-steps": 3, "lr": 1e-2})
    server = FedITServer(cfg)
    arrays = server.initial_arrays()
    first = server.evaluate(arrays)
    assert first["reward_accuracy"] == 0.0 and first["reward_margin"] == 0.0
    assert abs(first["eval_loss"] - np.log(2)) < 1e-9
    node = Node("client-0000", 0, 2)
    model, tokenizer = peft_model_for(cfg)
    data = node_pairs(cfg, node)
    seen, policies = [], []
    for rnd in (1, 2, 3):
        if rnd in (1, 3):
            dpo._MEMORY.clear()  # recompute: the reference must not depend on the round
            seen.append(reference_logps(cfg, model, data, tokenizer.pad_token_id).copy())
            load_adapter_state(model, arrays)
            policies.append(pair_logps(model, data, tokenizer.pad_token_id))
        arrays = client.train(cfg, arrays, rnd, cfg.train.lr, node).arrays
    np.testing.assert_array_equal(seen[0], seen[1])
    assert np.abs(policies[0] - policies[1]).max() > 1e-3
    last = server.evaluate(arrays)
    assert last["reward_margin"] != 0.0 and set(first) == set(last)


def test_reference_cache_on_disk_is_reused(tmp_path, one_thread):
    from fedtune.train import dpo

    data = PairSet(encode_pairs(_perturbed_lora_model()[1], PAIRS, 64).items)
    calls = []

    def compute():
        calls.append(1)
        return np.arange(6, dtype=np.float64).reshape(3, 2)

    first = dpo.cached_reference("ref-a", data, compute, tmp_path)
    dpo._MEMORY.clear()  # a new process: only the disk copy is left
    again = dpo.cached_reference("ref-a", data, compute, tmp_path)
    np.testing.assert_array_equal(first, again)
    assert len(calls) == 1 and len(list((tmp_path / "dpo-ref").glob("*.npy"))) == 1
    dpo.cached_reference("ref-b", data, compute, tmp_path)  # another reference: recomputed
    assert len(calls) == 2


def test_fedkseed_dpo_round_uses_w0_as_reference(tmp_path, one_thread):
    """A FedKSeed client's DPO round: forward-only steps on the DPO loss; the reference
    log-probs are w0's whatever version is loaded, and the global model's margin moves."""
    from fedtune.algorithms.fedkseed import client
    from fedtune.algorithms.fedkseed.dpo import reference_logps
    from fedtune.algorithms.fedkseed.model import zo_model_for
    from fedtune.algorithms.fedkseed.server import FedKSeedServer
    from fedtune.node import Node, node_pairs
    from fedtune.seeded import accumulate_
    from fedtune.train import dpo

    cfg = small_config(algorithm="fedkseed", objective="dpo", **{
        "zo-seeds": 64, "zo-steps": 8, "cache-dir": str(tmp_path)})
    server = FedKSeedServer(cfg)
    acc = server.initial_arrays()["accumulated"]
    assert server.evaluate({"accumulated": acc})["reward_margin"] == 0.0
    zm = zo_model_for(cfg)
    node = Node("client-0000", 0, 2)
    res = client.train(cfg, acc, 1, node, identity=zm.identity)
    assert res.scalars.shape == (8,) and np.isfinite(res.scalars).all()
    assert 0.0 <= res.metrics["train-reward-accuracy"] <= 1.0
    new = acc.copy()
    accumulate_(new, res.seed_indices, res.scalars, 1.0)
    data = node_pairs(cfg, node)
    before = reference_logps(cfg, zm, data).copy()
    zm.load(new, cfg.output.cache_dir)
    dpo._MEMORY.clear()
    shutil.rmtree(tmp_path / "dpo-ref")
    after = reference_logps(cfg, zm, data)  # recomputed from w0 with another version loaded
    np.testing.assert_array_equal(before, after)
    assert server.evaluate({"accumulated": new})["reward_margin"] != 0.0


def test_dropout_is_off_during_dpo_rounds_and_restored_after():
    from fedtune.train.dpo import dropout_off

    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.3), torch.nn.Dropout(0.1))
    net.train()
    x = torch.ones(2, 4)
    with dropout_off(net):
        assert [m.p for m in net if isinstance(m, torch.nn.Dropout)] == [0.0, 0.0]
        assert torch.equal(net(x), net(x))  # deterministic in train mode
    assert [m.p for m in net if isinstance(m, torch.nn.Dropout)] == [0.3, 0.1]
