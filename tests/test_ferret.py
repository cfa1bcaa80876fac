"""Ferret (Shu et al., ICML 2025): the estimator's properties, exact block versions, real rounds
through fedtune's loop and the real ClientApp (in-process Grid), other processes' bits."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord

from client_app.app import app as client_app
from fedtune.algorithms import resolve
from fedtune.algorithms.ferret import model as ferret_model
from fedtune.algorithms.ferret.blocks import group_blocks
from fedtune.algorithms.ferret.projection import SIGMA2, project, reconstruct
from fedtune.algorithms.ferret.server import FerretServer
from fedtune.config import ConfigError
from fedtune.seeded import derive_seeds, pack_pairs, unpack_pairs
from fedtune.seeded.rng import perturbations
from fedtune.seeded.versions import VersionStore
from fedtune.train.schedule import server_lr
from fedtune.wire import Records
from tests.conftest import ROOT, run_loop, small_config
from tests.inprocess_grid import InProcessGrid


def ferret_config(**overrides):
    flat = {"algorithm": "ferret", "ferret-seeds": 32, "local-steps": 4, "batch-size": 4,
            "fraction-evaluate": 0.0, "max-new-tokens": 2, "eval-examples": 8,
            "fraction-train": 1.0}
    flat.update(overrides)
    return small_config(**flat)


def _run(cfg, num_nodes=2, tamper=None):
    rows = []
    grid = InProcessGrid(client_app, num_nodes, cfg.to_flat(), tamper=tamper)
    accumulated = run_loop(grid, cfg, rows.append)["accumulated"]
    return rows, accumulated, grid


def _store(sizes, k, blocks, run_seed=0):
    """A VersionStore over fresh float32 tensors of ``sizes`` (its w0), and the tensors."""
    gen = torch.Generator().manual_seed(7)
    params = [torch.randn(n, generator=gen) for n in sizes]
    return VersionStore(params, derive_seeds(run_seed, k), 1.0, blocks=blocks,
                        frac_bits=ferret_model.FRAC_BITS), params


def test_blocks_group_consecutive_tensors_as_the_official_code():
    # target = int(0.9 x median 65) = 58: tensors share a block until the next would pass it
    assert group_blocks([100, 10, 10, 100, 100, 20, 30, 200]) == [0, 1, 1, 2, 3, 4, 4, 5]
    cfg = ferret_config()
    fm = ferret_model.ferret_model_for(cfg)
    sizes = [p.numel() for p in fm.params]
    blocks = fm.store.blocks
    assert fm.store.num_blocks == 34 and fm.store.codes.size == 34 * 32
    for b in range(fm.store.num_blocks):  # a block over the target is a single tensor
        members = [n for n, i in zip(sizes, blocks, strict=True) if i == b]
        assert len(members) == 1 or sum(members) <= 0.9 * np.median(sizes)


def test_projection_computes_the_papers_coefficients_exactly():
    """The streamed, chunked, threaded projection = gamma_bk = <z_k, Delta_b> / (n_b sigma2),
    the paper's estimator written densely, and n_b follows the block norms."""
    sizes, blocks, k = [300, 52, 1000], [0, 0, 1], 24
    store, params = _store(sizes, k, blocks)
    store.chunk = 64  # several chunks per tensor
    delta = [torch.randn(n, generator=torch.Generator().manual_seed(n)) * s
             for n, s in zip(sizes, (1.0, 1.0, 0.3), strict=True)]
    with torch.no_grad():
        for p, d in zip(params, delta, strict=True):
            p.sub_(d)  # held version (w0) - weights = delta
    store.mark_changed()
    entries, gammas, norms = project(store, np.random.default_rng(0), min_seeds=2)
    want_norms = [math.sqrt(sum(float(d.double().square().sum()) for d, b in
                                zip(delta, blocks, strict=True) if b == block)) for block in (0, 1)]
    np.testing.assert_allclose(norms, want_norms, rtol=1e-6)
    counts = np.bincount(entries // k, minlength=2)
    assert counts[0] == k and counts[1] == int(norms[1] / norms[0] * k) >= 2
    for entry, gamma in zip(entries, gammas, strict=True):
        b, s = divmod(int(entry), k)
        dot = sum(float(perturbations([int(store.seeds[s])], i, n)[0].double() @ delta[i].double())
                  for i, n in enumerate(sizes) if blocks[i] == b)
        assert gamma == pytest.approx(dot / (counts[b] * SIGMA2), rel=1e-5)


def test_projection_is_unbiased_with_the_papers_error_rate():
    """E[Delta~] = Delta over the seed pools (Ferret's unbiased reconstruction), and
    E||Delta~ - Delta||^2 = (d + 1) / n ||Delta||^2 for n directions on a block of d weights
    (Gaussian directions; the table's are its quantiles). Exactness does not hold for finite n:
    even with K >= d random directions are not orthogonal, which this also shows."""
    d, k, pools = 48, 64, 300  # K >= the block size
    store, params = _store([d], k, [0])
    delta = torch.linspace(-1, 1, d)
    with torch.no_grad():
        params[0].sub_(delta)
    store.mark_changed()
    total, errors = torch.zeros(d, dtype=torch.float64), []
    for trial in range(pools):
        store.seeds = derive_seeds(1000 + trial, k)
        entries, gammas, _ = project(store, np.random.default_rng(trial), min_seeds=k)
        rec = reconstruct(entries, gammas, store.seeds, [0], [d])[0]
        total += rec
        errors.append(float((rec - delta.double()).square().sum()))
    sq = float(delta.double().square().sum())
    mean_error = float((total / pools - delta.double()).norm()) / math.sqrt(sq)
    assert mean_error < 2.0 * math.sqrt((d + 1) / (k * pools))  # ~0.10 expected
    ratio = np.mean(errors) / sq
    assert 0.7 * (d + 1) / k < ratio < 1.3 * (d + 1) / k  # single draws are far from exact


def test_block_versions_are_exact_and_incremental():
    """w = w0 - lr * sum_bk A_bk z_k|b, reached through any chain of versions with the same bits,
    and within A's 2**-24 quantum of the float reconstruction."""
    sizes, blocks, k = [300, 52, 1000], [0, 0, 1], 16
    rng = np.random.default_rng(0)
    versions = [np.zeros(2 * k, np.float32)]
    for _ in range(3):
        a = versions[-1].copy()
        touched = rng.choice(2 * k, 9, replace=False)
        a[touched] += rng.normal(0, 0.1, 9).astype(np.float32)
        versions.append(a)
    chained, _ = _store(sizes, k, blocks)
    for a in versions[1:]:
        chained.load(a)
    direct, w0 = _store(sizes, k, blocks)
    w0 = [p.clone() for p in w0]
    assert direct.load(versions[-1]) == np.count_nonzero(versions[-1])
    for p, q in zip(chained.params, direct.params, strict=True):
        assert torch.equal(p, q)
    entries = np.flatnonzero(versions[-1])
    ref = reconstruct(entries, versions[-1][entries], direct.seeds, blocks, sizes)
    for p, p0, r in zip(direct.params, w0, ref, strict=True):
        torch.testing.assert_close(p.double(), p0.double() - r, rtol=0, atol=1e-5)
    untouched, _ = _store(sizes, k, blocks)  # a change on block 1 leaves block 0's bits alone
    before = untouched.params[0].clone()
    a = np.zeros(2 * k, np.float32)
    a[k + 3] = 0.5
    untouched.load(a)
    assert torch.equal(untouched.params[0], before) and not torch.equal(untouched.params[2], w0[2])


def test_ferret_learns_and_uploads_only_coefficients():
    cfg = ferret_config(**{"num-server-rounds": 3})
    rows, _, grid = _run(cfg)
    losses = [r["eval_loss"] for r in rows]
    assert losses[-1] < 0.8 * losses[0], losses  # 6.17 -> ~4.3 measured
    replies = [m for m in grid.sent if m.metadata.message_type == "train"]
    assert len(replies) == 3 * 2
    for r in rows[1:]:
        # down: A, one float32 per (block, seed) = 34 x 32 x 4 B, plus the round config
        assert 34 * 32 * 4 <= r["payload_down_per_client"] < 34 * 32 * 4 + 600, r
        # up: (uint16 entry, float32 coefficient) pairs, at least ferret-min-seeds per block
        assert 34 * 2 * 6 <= r["payload_up_per_client"] <= 34 * 32 * 6 + 600, r


def test_all_parties_hold_the_same_weights_bit_for_bit(tmp_path):
    """After three rounds the server (this process) and two clients in other processes, one
    catching up version by version and one from w0 in a single load, hold the same bits."""
    cfg = ferret_config(**{"num-server-rounds": 3})
    _, accumulated, grid = _run(cfg)
    sent = [m.content["arrays"]["accumulated"].numpy() for m in grid.sent
            if m.metadata.message_type == "train"]
    chain = [sent[2], sent[4], accumulated]  # A after rounds 1, 2, 3
    assert all(np.count_nonzero(a) for a in chain)
    fm = ferret_model.ferret_model_for(cfg)
    fm.load(accumulated)
    here = fm.checksum()
    for i, a in enumerate(chain):
        np.save(tmp_path / f"a{i}.npy", a)
    code = (
        "import json, sys, numpy as np\n"
        "from fedtune.config import Config\n"
        "from fedtune.algorithms.ferret.model import ferret_model_for\n"
        "cfg = Config.from_flat(json.loads(sys.argv[1]))\n"
        "fm = ferret_model_for(cfg)\n"
        "for path in sys.argv[2:]:\n"
        "    fm.load(np.load(path))\n"
        "print(fm.checksum())\n"
    )
    flat = json.dumps(cfg.to_flat())
    for files in ([f"a{i}.npy" for i in range(3)], ["a2.npy"]):
        out = subprocess.run([sys.executable, "-c", code, flat, *files], capture_output=True,
                             text=True, cwd=tmp_path, check=True,
                             env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}).stdout
        assert out.split()[-1] == here


@pytest.mark.parametrize("corrupt, reason", [
    (lambda e, g: (np.append(e, e[0]), np.append(g, g[0])), "appears twice"),
    (lambda e, g: (np.where(e == e[0], 34 * 32, e), g), "bad coefficient pairs"),
    (lambda e, g: (e, np.where(np.arange(g.size) == 1, np.inf, g)), "bad coefficient pairs"),
])
def test_bad_replies_are_dropped_and_logged(corrupt, reason, caplog):
    cfg = ferret_config(**{"num-server-rounds": 1})
    k = 34 * 32

    def tamper(node, reply):
        if reply.metadata.message_type == "train" and node == 1001:
            entries, gammas = unpack_pairs(reply.content["zo"]["pairs"], k)
            entries, gammas = corrupt(entries, gammas)
            # pack_pairs validates, so write the corrupt bytes by hand
            blob = entries.astype("<u2").tobytes() + gammas.astype("<f4").tobytes()
            reply.content["zo"] = ConfigRecord({"pairs": blob})
        return reply

    with caplog.at_level("WARNING", logger="fedtune"):
        rows, accumulated, _ = _run(cfg, num_nodes=2, tamper=tamper)
    assert rows[1]["dropped"] == 1 and np.count_nonzero(accumulated)
    assert "dropped reply from client-0000" in caplog.text and reason in caplog.text


def test_dpo_starts_at_log_2_and_a_local_round_lowers_the_clients_dpo_loss():
    """The reference is w0 (the held-out DPO loss of round 0 is log 2), and a local round's
    first-order steps lower the DPO loss of the client's own pairs (0.693 -> 0.641 measured)."""
    from fedtune.algorithms.fedkseed.dpo import reference_logps
    from fedtune.algorithms.ferret import client as ferret_client
    from fedtune.eval.preference import preference_metrics
    from fedtune.node import Node, node_pairs
    from fedtune.train.dpo import DPOSettings

    cfg = ferret_config(objective="dpo", **{"num-server-rounds": 1, "local-steps": 20})
    rows, _, _ = _run(cfg)
    assert rows[0]["eval_loss"] == pytest.approx(math.log(2), abs=1e-9)
    assert math.isfinite(rows[1]["eval_loss"])
    fm = ferret_model.ferret_model_for(cfg)
    node = Node("client-0000", 0, 2)
    pairs = node_pairs(cfg, node)
    ref = reference_logps(cfg, fm, pairs)
    zero = np.zeros(fm.store.codes.size, np.float32)

    def own_loss() -> float:
        return preference_metrics(fm.model, pairs, ref, DPOSettings.from_config(cfg.train),
                                  fm.tokenizer.pad_token_id, 8)["eval_loss"]

    fm.load(zero)
    before = own_loss()
    res = ferret_client.train(cfg, zero, 1, node, {**fm.identity, "lr": 0.1})
    assert own_loss() < before - 0.03  # the weights after the local steps, before any load
    assert res.entries.size and np.isfinite(res.gammas).all()


def test_the_saved_model_is_the_final_version(tmp_path):
    from transformers import AutoModelForCausalLM

    from fedtune.flower.server import run_server

    cfg = ferret_config(**{"num-server-rounds": 1, "run-dir": str(tmp_path / "run")})
    grid = InProcessGrid(client_app, 2, cfg.to_flat())
    run_dir = run_server(grid, cfg)
    state = np.load(run_dir / "ferret-state.npz")
    fm = ferret_model.ferret_model_for(cfg)
    fm.load(state["accumulated"])
    saved = AutoModelForCausalLM.from_pretrained(run_dir / "model")
    named = dict(saved.named_parameters())
    for (name, p) in fm.model.named_parameters():
        assert torch.equal(named[name].detach(), p.detach()), name


@pytest.mark.parametrize("keys, message", [
    ({"dp": "client", "dp-noise-multiplier": 1.0, "dp-clip-norm": 1.0}, "dp or secagg"),
    ({"ferret-seeds": 0}, "ferret-seeds=0"),
    ({"ferret-optimizer": "lion"}, "ferret-optimizer"),
    ({"ferret-server-lr-schedule": "step"}, "ferret-server-lr-schedule='step' is unknown"),
    ({"strategy": "fedadam"}, "does not fit"),
])
def test_config_errors_are_one_sentence(keys, message):
    with pytest.raises(ConfigError, match=message) as err:
        resolve(ferret_config(**keys))
    assert "\n" not in str(err.value)



def test_server_lr_schedules_are_the_official_codes():
    """allen4747/Ferret main.py: linear_annealing_lr(r - 1, R, slr_max) and the cosine one."""
    rounds = 12
    official_linear = [10 * (1 - (r - 1) / rounds) for r in range(1, rounds + 1)]
    official_cosine = [10 * (1 + math.cos(math.pi * (r - 1) / rounds)) / 2
                       for r in range(1, rounds + 1)]
    for schedule, official in (("linear", official_linear), ("cosine", official_cosine),
                               ("constant", [10.0] * rounds)):
        ours = [server_lr(10.0, r, rounds, schedule) for r in range(1, rounds + 1)]
        assert ours == pytest.approx(official, rel=1e-12), schedule
    assert server_lr(10.0, 12, 12, "linear") == pytest.approx(10 / 12)  # never 0


def test_the_server_lr_schedule_scales_each_rounds_coefficients():
    """Round r's replies enter A times f_r = server lr / ferret-server-lr; constant leaves the
    replies untouched (the default run's bits)."""
    cfg = ferret_config(**{"ferret-server-lr-schedule": "linear", "num-server-rounds": 4})
    server = FerretServer(cfg)
    k = server.zm.store.codes.size
    entries, gammas = np.array([0, 5, k - 1]), np.array([1.0, -2.0, 0.5], np.float32)

    def reply():
        return Records(configs={"zo": {"pairs": pack_pairs(entries, gammas, k)}})

    server.train_config(1)
    first = reply()
    assert server.receive([first])[0] is first
    server.train_config(3)  # f = 1 - 2/4
    got = unpack_pairs(server.receive([reply()])[0].configs["zo"]["pairs"], k)
    assert np.array_equal(got[0], entries) and np.array_equal(got[1], gammas * 0.5)
    constant = FerretServer(ferret_config(**{"num-server-rounds": 4}))
    constant.train_config(3)
    untouched = reply()
    assert constant.receive([untouched])[0].configs["zo"]["pairs"] == \
        untouched.configs["zo"]["pairs"]


def test_the_auto_lr_goes_through_stories260k_and_the_official_script():
    """0.02 at stories260k (measured on NI: 0.05 overshot), 1e-4 at LLaMA-1B's 1.3e9."""
    from fedtune.algorithms.ferret.config import FerretConfig, ferret_lr

    cfg = FerretConfig()
    assert ferret_lr(cfg, 260_000, tiny=False) == pytest.approx(0.02)
    assert ferret_lr(cfg, 1_300_000_000, tiny=False) == pytest.approx(1e-4, rel=0.01)
    assert ferret_lr(cfg, 260_000, tiny=True) == 0.1
