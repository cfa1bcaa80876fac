"""Per-round checkpoints and exact resume: a run that crashes after round 2 and is resumed ends
bit-identical to one that never stopped (the real ServerApp path, on an in-process Grid). A
Ray run killed with SIGKILL and resumed: tests/test_ray_engine.py."""

import json

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord

from client_app.app import app as client_app
from fedtune.checkpoint import (
    CHECKPOINT,
    Checkpoint,
    CheckpointError,
    config_changes,
    load_checkpoint,
    save_checkpoint,
    strategy_state,
)
from fedtune.flower.server import run_server
from fedtune.privacy.randomness import SECRET_ENV
from fedtune.strategies.scaffold import Scaffold
from fedtune.strategies.state import UndeclaredStateError
from tests.conftest import small_config
from tests.inprocess_grid import InProcessGrid

FAST = {"num-server-rounds": 4, "local-steps": 2, "examples-per-client": 16, "eval-examples": 8,
        "client-eval-examples": 4, "max-new-tokens": 2, "fraction-train": 1.0,
        "fraction-evaluate": 0.5, "min-available-nodes": 2, "lr-schedule": "cosine"}
CASES = {
    "fedit-fedadam": {"strategy": "fedadam", "server-lr": 0.01},
    "fedkseed-pro": {"algorithm": "fedkseed-pro", "zo-seeds": 64, "zo-steps": 4,
                     "batch-size": 2, "seeds-server-momentum": 0.5},
    # the accountant's ledger: a resumed run reports the same epsilon as one that never stopped;
    # bit for bit only with the server's FEDTUNE_DP_SECRET (set by the test), the noise being
    # fresh entropy otherwise (test_a_dp_run_resumed_without_the_secret_draws_fresh_noise)
    "fedkseed-pro-dp": {"algorithm": "fedkseed-pro", "zo-seeds": 64, "zo-steps": 4,
                        "batch-size": 2, "seeds-server-momentum": 0.5, "dp": "client",
                        "dp-noise-multiplier": 0.8, "dp-clip-norm": 5.0,
                        "fraction-evaluate": 0.0},
    # LoRA aggregation variants: FedSA's B lives on the nodes (their snapshots carry it over
    # the crash), FLoRA's and FedEx-LoRA's merged base on the server and the nodes
    "fedit-fedsa": {"lora-aggregation": "fedsa"},
    "fedit-flora": {"lora-aggregation": "flora", "lora-ranks": "4,8"},
    "fedit-fedex": {"lora-aggregation": "fedex"},
    "fedit-ffa": {"lora-aggregation": "ffa"},
    "fedit-scaffold": {"strategy": "scaffold"},  # c on the server, c_i in the nodes' snapshots
    # PEFT methods: VeRA's frozen projections rebuilt, not restored; a soft prompt's SCAFFOLD
    # control variates (its state is computed from the embedding table, matched by name)
    "fedit-vera": {"peft-method": "vera", "lr": 1e-2},
    "fedit-prompt-scaffold": {"peft-method": "prompt-tuning", "strategy": "scaffold"},
    # Ferret: A of (block, seed) coefficients and the seeds strategy's momentum
    "ferret": {"algorithm": "ferret", "ferret-seeds": 16, "seeds-server-momentum": 0.5},
}


class Crash(BaseException):
    """Stands in for the server process dying (not an Exception: nothing may catch it)."""


def run(tmp_path, name, keys, crash_in_round=None, resume=False):
    cfg = small_config(**{**FAST, **keys, "run-dir": str(tmp_path / name),
                          "node-state-dir": str(tmp_path / name / "node-state")})
    if resume:
        cfg.output.resume = cfg.output.run_dir
    if cfg.train.algorithm.startswith("fedkseed") or cfg.train.algorithm == "ferret":
        cfg.output.cache_dir = str(tmp_path / name / "zo-cache")

    trained = []  # both nodes train every round (fraction-train 1.0)

    def tamper(node, reply):
        if reply.metadata.message_type == "train":
            trained.append(node)
            if crash_in_round and len(trained) > 2 * (crash_in_round - 1):
                raise Crash
        return reply

    grid = InProcessGrid(client_app, 2, cfg.to_flat(), tamper=tamper)
    return run_server(grid, cfg)


def final_state(run_dir):
    if (run_dir / "adapter").is_dir():
        return {"adapter": (run_dir / "adapter" / "adapter_model.safetensors").read_bytes()}
    if (run_dir / "model").is_dir():  # FLoRA, FedEx-LoRA: the merged model
        return {"model": (run_dir / "model" / "model.safetensors").read_bytes()}
    with np.load(run_dir / "fedkseed-state.npz") as data:
        return {k: data[k].tobytes() for k in data.files}


def rows(run_dir):
    out = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if "seconds" not in k} for r in out]  # timings aside


#: the costliest cases (merged bases, 4 rounds each twice) run in the full suite only
SLOW_CASES = {"fedit-fedex", "fedit-flora", "fedit-ffa", "fedit-vera", "fedit-prompt-scaffold"}


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c in SLOW_CASES
                                  else c for c in sorted(CASES)])
def test_resume_after_a_crash_is_bit_identical(tmp_path, case, one_thread, monkeypatch):
    if CASES[case].get("dp"):  # DP's noise and sample: reproducible only with the secret
        monkeypatch.setenv(SECRET_ENV, "checkpoint-test-secret")
    whole = run(tmp_path, "whole", CASES[case])
    with pytest.raises(Crash):
        run(tmp_path, "crashed", CASES[case], crash_in_round=3)
    ckpt = load_checkpoint(tmp_path / "crashed")
    assert ckpt.round == 2 and [r["round"] for r in ckpt.rows] == [0, 1, 2]
    if case == "fedit-fedadam":
        assert {k.split("/")[0] for k in ckpt.strategy} == {"current_arrays", "m_t", "v_t"}
    elif case == "fedkseed-pro":
        assert ckpt.algorithm["pro_counts"].sum() == 2 * 2 * 4  # 2 rounds x 2 clients x tau
        assert np.abs(ckpt.strategy["momentum/array/"]).sum() > 0
    elif case in ("fedit-flora", "fedit-fedex"):  # Delta, the nodes' rounds, recent factors
        assert int(ckpt.algorithm["round"]) == 2 and np.abs(ckpt.algorithm[
            next(k for k in ckpt.algorithm if k.startswith("delta/"))]).sum() > 0
    elif case == "ferret":
        assert np.abs(ckpt.strategy["momentum/array/"]).sum() > 0
    elif case in ("fedit-fedsa", "fedit-ffa", "fedit-scaffold", "fedit-vera",
                  "fedit-prompt-scaffold"):
        assert not ckpt.algorithm
    else:  # DP: (z, m, N) of the 2 released rounds; Pro counts the dense noisy mean per reply
        assert ckpt.strategy["dp:ledger"].tolist() == [[0.8, 2, 2]] * 2
        assert ckpt.algorithm["pro_counts"].sum() == 2 * 2 * 64
        assert np.abs(ckpt.strategy["inner:momentum/array/"]).sum() > 0

    resumed = run(tmp_path, "crashed", CASES[case], resume=True)
    assert final_state(resumed) == final_state(whole)
    assert rows(resumed) == rows(whole)  # rounds 0..4 once each, identical metrics
    assert not list(resumed.glob(".checkpoint-*"))  # no temporary file left behind


def test_a_dp_run_resumed_without_the_secret_draws_fresh_noise(tmp_path, one_thread,
                                                                monkeypatch):
    """Without the server's secret nothing can redraw the noise, so exact resume means: the
    rounds before the checkpoint are kept as they were, the accountant's ledger continues
    (the same epsilon as a run that never stopped), and the later rounds draw fresh noise (two
    resumptions of one checkpoint end apart)."""
    import shutil

    monkeypatch.delenv(SECRET_ENV, raising=False)
    keys = {**CASES["fedkseed-pro-dp"], "seeds-server-momentum": 0.0}
    with pytest.raises(Crash):
        run(tmp_path, "crashed", keys, crash_in_round=3)
    kept = rows(tmp_path / "crashed")
    shutil.copytree(tmp_path / "crashed", tmp_path / "again")
    ends = [run(tmp_path, name, keys, resume=True) for name in ("crashed", "again")]
    for run_dir in ends:
        assert rows(run_dir)[:3] == kept
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["dp_rounds"] == 4 and summary["dp_secret"] is False
    assert rows(ends[0])[-1]["dp_epsilon"] == rows(ends[1])[-1]["dp_epsilon"]
    assert final_state(ends[0])["accumulated"] != final_state(ends[1])["accumulated"]


def test_resume_refuses_another_config(tmp_path, one_thread):
    run(tmp_path, "r", {"num-server-rounds": 1, "fraction-evaluate": 0.0})
    with pytest.raises(CheckpointError, match=r"lr: 0.002 -> 0.01"):
        run(tmp_path, "r", {"num-server-rounds": 1, "fraction-evaluate": 0.0, "lr": 0.01},
            resume=True)


def test_a_missing_or_torn_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="has no checkpoint.npz"):
        load_checkpoint(tmp_path)
    (tmp_path / CHECKPOINT).write_bytes(b"PK\x03\x04 torn")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(tmp_path)


def test_save_replaces_the_checkpoint_atomically(tmp_path):
    a = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    save_checkpoint(tmp_path, Checkpoint(1, {"lr": 0.1}, a, {}, {}, [{"round": 1}]))
    save_checkpoint(tmp_path, Checkpoint(2, {"lr": 0.1}, {"w": a["w"] + 1}, {"m": a["w"]}, {},
                                         [{"round": 1}, {"round": 2}]))
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT]
    got = load_checkpoint(tmp_path)
    assert got.round == 2 and got.rows[-1] == {"round": 2} and got.config == {"lr": 0.1}
    np.testing.assert_array_equal(got.arrays["w"], a["w"] + 1)
    np.testing.assert_array_equal(got.algorithm["m"], a["w"])


class _EveryKind(Scaffold):
    state_attrs = ("control", "current_arrays", "momentum_vector")


def test_a_key_newer_than_the_saved_run_counts_as_its_default():
    """A run checkpointed by an earlier fedtune resumes when a later one added a key (its
    default keeps the old behaviour), and still refuses a non-default value of that key."""
    now = small_config(**FAST).to_flat()
    saved = {k: v for k, v in now.items() if k != "deterministic"}
    assert config_changes(saved, now) == []
    assert config_changes(saved, {**now, "deterministic": False}) == [
        "deterministic: True -> False"]
    assert config_changes({**now, "lr": 1.0}, now) == [f"lr: 1.0 -> {now['lr']!r}"]


def test_strategy_state_round_trips_every_kind():
    x = {"a": np.ones((2, 2), np.float32), "b": np.arange(3, dtype=np.float32)}
    s = _EveryKind(num_clients=2)
    s.control = {k: v * 3 for k, v in x.items()}  # a dict, as SCAFFOLD's c and FedOpt's m_t
    s.current_arrays = ArrayRecord({k: Array(v) for k, v in x.items()})  # as in FedAvgM
    s.momentum_vector = [v * 2 for v in x.values()]  # a list, as FedAvgM's momentum
    fresh = _EveryKind(num_clients=2)
    fresh.load_state_dict(strategy_state(s))
    for k in x:
        np.testing.assert_array_equal(fresh.control[k], x[k] * 3)
        np.testing.assert_array_equal(fresh.current_arrays[k].numpy(), x[k])
    assert list(fresh.current_arrays.keys()) == ["a", "b"]
    for got, want in zip(fresh.momentum_vector, s.momentum_vector, strict=True):
        np.testing.assert_array_equal(got, want)


def test_a_strategy_with_undeclared_state_refuses_to_be_checkpointed():
    """State kept under a name the strategy does not declare would be lost on resume: saving
    it raises instead, and so does a strategy without state_dict()."""
    s = Scaffold(num_clients=2)
    strategy_state(s)  # nothing undeclared yet
    s.drift = np.zeros(3)  # new state, not in state_attrs
    with pytest.raises(UndeclaredStateError, match="drift"):
        strategy_state(s)
    s = Scaffold(num_clients=2)
    s.num_clients = 5  # configuration reassigned after construction: state too
    with pytest.raises(UndeclaredStateError, match="num_clients"):
        strategy_state(s)
    with pytest.raises(CheckpointError, match="has no state_dict"):
        strategy_state(object())
    with pytest.raises(UndeclaredStateError, match="does not keep"):
        Scaffold(num_clients=2).load_state_dict({"m_t/dict/a": np.zeros(2)})
