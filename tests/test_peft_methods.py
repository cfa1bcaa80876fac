"""FedIT's PEFT methods (``peft-method``) and LoRA options (DoRA, rsLoRA, ``lora-init``): each is
built by peft, only its trainable state travels, its frozen parts are derived alike by every
party, it trains, and the saved adapter loads with ``PeftModel.from_pretrained`` into the model
the server evaluated; what does not fit is refused in one sentence."""

import json
import math

import numpy as np
import pytest
import torch
from flwr.app import RecordDict
from peft import PeftModel
from peft.tuners.lora import LoraLayer

from client_app.app import app as client_app
from fedtune.algorithms import resolve
from fedtune.algorithms.fedit import model as fedit_model
from fedtune.algorithms.fedit.client import train
from fedtune.algorithms.fedit.dpo import reference_logps
from fedtune.algorithms.fedit.methods import METHODS
from fedtune.algorithms.fedit.model import initial_adapter, peft_model_for
from fedtune.algorithms.fedit.server import FedITServer
from fedtune.compat import Incompatible
from fedtune.errors import ConfigError
from fedtune.flower.server import run_server
from fedtune.models.loading import build_tiny
from fedtune.models.saved import load_adapter_folder, require_merged
from fedtune.node import Node, node_pairs
from fedtune.wire.flower import payload_bytes, to_arrayrecord
from tests.conftest import small_config
from tests.inprocess_grid import InProcessGrid

#: every method, and LoRA with each option
CASES = {**{m: {"peft-method": m} for m in METHODS if m != "lora"},
         "dora": {"lora-use-dora": True}, "rslora": {"lora-use-rslora": True},
         "gaussian": {"lora-init": "gaussian"}, "pissa": {"lora-init": "pissa"},
         "olora": {"lora-init": "olora"}}
NODE = Node(name="n0", partition_id=0, num_partitions=2)


def _cfg(tmp_path=None, **keys):
    extra = {"run-dir": str(tmp_path / "run")} if tmp_path is not None else {}
    return small_config(**{"local-steps": 1, "examples-per-client": 4, "eval-examples": 4,
                            **keys, **extra})


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.float()


def _trainable_numel(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


#: the quick tier's cases (the rest are slow): frozen shared parts, no layer adapted, a residual
#: base
QUICK = ("vera", "prompt-tuning", "pissa")


@pytest.mark.parametrize("case", [c if c in QUICK else pytest.param(c, marks=pytest.mark.slow)
                                  for c in CASES])
def test_each_method_trains_only_its_trainable_state_and_saves_what_the_server_evaluates(
        tmp_path, case):
    cfg = _cfg(tmp_path, **CASES[case])
    model, _ = peft_model_for(cfg)
    state = initial_adapter(cfg)
    # what travels is exactly the trainable parameters (VeRA's shared projections stay home)
    assert sum(v.size for v in state.values()) == _trainable_numel(model)
    result = train(cfg, state, server_round=1, lr=5e-3, node=NODE)
    assert set(result.arrays) == set(state)
    assert any(not np.array_equal(result.arrays[k], state[k]) for k in state)
    assert math.isfinite(result.metrics["train-loss"])

    server = FedITServer(cfg)
    out = server.save(result.arrays, tmp_path)
    ids = torch.tensor([[1, 5, 9, 14, 3, 7]])
    served = _logits(server.model, ids)
    loaded = PeftModel.from_pretrained(build_tiny(), out).eval()
    # PiSSA/OLoRA: saved as the rank-2r LoRA of the same model on the untouched base
    tol = 1e-4 if CASES[case].get("lora-init") in ("pissa", "olora") else 1e-6
    assert torch.allclose(_logits(loaded, ids), served, atol=tol)
    assert json.loads((out / "fedtune.json").read_text())["peft_method"] == cfg.lora.peft_method
    merged, _ = load_adapter_folder(out)  # what `fedtune generate` and `export` read
    if case == "prompt-tuning":  # a soft prompt generates as a PeftModel and cannot be merged
        assert torch.allclose(_logits(merged, ids)[:, -ids.shape[1]:], served[:, -ids.shape[1]:])
        with pytest.raises(ConfigError, match="soft prompt"):
            require_merged(merged, None, "run")
    else:
        assert torch.allclose(_logits(require_merged(merged, None, "run")[0], ids), served,
                              atol=tol * 10)


@pytest.mark.parametrize("case", ["vera", "pissa", "fourierft"])
def test_every_party_derives_the_same_frozen_parts(case):
    """A second process (the cache cleared) builds the same frozen projections / residual base
    from the same inputs, so they never need to travel."""
    cfg = _cfg(**CASES[case])

    def frozen() -> dict[str, torch.Tensor]:
        model, _ = peft_model_for(cfg)
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        return {n: t.detach().clone() for n, t in [*model.named_parameters(),
                                                   *model.named_buffers()]
                if n not in trainable}

    first = frozen()
    fedit_model._cached.cache_clear()
    second = frozen()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[n], second[n]) for n in first)


def test_the_wire_carries_the_trainable_state_and_learns(tmp_path):
    """Real rounds (VeRA): bytes up and down are the trainable state's, and the loss falls."""
    cfg = _cfg(tmp_path, **{"peft-method": "vera", "lr": 2e-2, "num-server-rounds": 2,
                            "local-steps": 2, "examples-per-client": 8,
                            "min-available-nodes": 2, "fraction-train": 1.0})
    run_dir = run_server(InProcessGrid(client_app, 2, cfg.to_flat()), cfg)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    wire = payload_bytes(RecordDict({"a": to_arrayrecord(initial_adapter(cfg), np.float16)}))
    for row in rows[1:]:
        assert row["payload_up_per_client"] == wire == row["payload_down_per_client"]
    assert rows[-1]["eval_loss"] < rows[0]["eval_loss"]


def test_rslora_scales_by_the_square_root_of_the_rank():
    cfg = _cfg(**{"lora-use-rslora": True, "lora-r": 16, "lora-alpha": 8})
    model, _ = peft_model_for(cfg)
    layer = next(m for m in model.modules() if isinstance(m, LoraLayer))
    assert layer.scaling["default"] == pytest.approx(8 / 4) == cfg.lora.scale
    assert cfg.lora.alpha_for(4) / math.sqrt(4) == pytest.approx(cfg.lora.scale)


def test_a_dpo_reference_is_the_model_the_run_starts_from_even_on_a_residual_base():
    """PiSSA rewrites the base into W - s B0 A0: the reference must be the initial adapter on
    it (the original model), not the residual base with the adapter disabled."""
    plain, pissa = (_cfg(objective="dpo", **keys) for keys in ({}, {"lora-init": "pissa"}))
    model, tok = peft_model_for(plain)
    pairs = node_pairs(plain, NODE)
    want = reference_logps(plain, model, pairs, tok.pad_token_id)
    model, _ = peft_model_for(pissa)
    got = reference_logps(pissa, model, pairs, tok.pad_token_id)
    np.testing.assert_allclose(got, want, rtol=1e-4)


@pytest.mark.parametrize("keys,match", [
    ({"peft-method": "vera", "lora-alpha": 8}, "lora-alpha is not read by peft-method='vera'"),
    ({"peft-method": "ia3", "lora-aggregation": "ffa"}, "lora-aggregation is not read by"),
    ({"peft-method": "loha", "lora-ranks": "4,8"}, "lora-ranks is not read by"),
    ({"peft-method": "lora", "prompt-virtual-tokens": 4}, "prompt-virtual-tokens is not read"),
    ({"lora-use-dora": True, "lora-aggregation": "flora"}, "lora-use-dora cannot run with"),
    ({"lora-use-dora": True, "lora-aggregation": "ffa"}, "lora-use-dora cannot run with"),
    ({"lora-init": "pissa", "lora-aggregation": "flora"}, "lora-init='pissa' cannot run with"),
    ({"lora-init": "olora", "lora-ranks": "4,16"}, "cannot mix ranks"),
    ({"lora-init": "gaussian", "lora-aggregation": "flora", "lora-restart-init": "fresh"},
     "cannot run with lora-restart-init='fresh'"),
    ({"peft-method": "vera", "init-adapter": "runs/x/adapter"}, "cannot start from init-adapter"),
    ({"peft-method": "vera", "algorithm": "fedkseed"}, "peft-method is read by"),
])
def test_what_does_not_fit_is_refused_in_one_sentence(keys, match):
    with pytest.raises(Incompatible, match=match) as err:
        resolve(small_config(**keys))
    assert str(err.value).count(". ") == 0 and str(err.value).endswith(".")
