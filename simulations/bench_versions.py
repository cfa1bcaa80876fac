"""FedKSeed's exact incremental versions at scale: equality, catch-up cost, memory, default run.

Used by ``simulations/bench_zo.py`` (which writes the ``--json`` report); each function returns
the figures it measured:

- :func:`bench_catch_up`: a party that follows every round and a party that jumps from w0 to the
  last version hold the same bits; seeds applied per round by the follower vs seeds drawn.
- :func:`bench_client_memory`: peak resident memory of a FedKSeed client round (catch up, tau
  ZO steps, restore) in a fresh process, on a Llama of >= 50M parameters built in code, over
  the float32 weights' size; the interpreter + torch + transformers runtime is measured in the
  same run and reported beside it.
- :func:`bench_default_run`: the default FedKSeed simulation (12 rounds) still learns, and its
  payload per client per round stays within the paper's 17,984 bytes.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fedtune.zo import derive_seeds, zo_parameters, zo_step
from fedtune.zo.versions import VersionStore

PAPER_BYTES = 4096 * 4 + 200 * (4 + 4)  # "under 18 kilobytes": 17,984


def _llama(hidden: int, layers: int, vocab: int, intermediate: int, heads: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
        max_position_embeddings=512, tie_word_embeddings=False)).eval()


def _checksum(params: list[torch.Tensor]) -> str:
    import hashlib

    h = hashlib.sha256()
    for p in params:
        h.update(p.detach().cpu().numpy().tobytes())
    return h.hexdigest()


def bench_catch_up(rounds: int = 4, clients: int = 4, tau: int = 200, k: int = 4096,
                   size: str = "small") -> dict:
    """A follower (every round) vs a party loading the last version from w0."""
    dims = {"small": (128, 2, 2048, 344, 4), "medium": (256, 4, 1024, 688, 4)}[size]
    seeds = derive_seeds(0, k)
    rng = np.random.default_rng(0)
    a = np.zeros(k, np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        follower = zo_parameters(_llama(*dims))
        n = sum(p.numel() for p in follower)
        store = VersionStore([p.data for p in follower], seeds, 1e-4, Path(tmp) / "f")
        applied, drawn, seconds = [], [], []
        for _ in range(rounds):
            picks = rng.integers(0, k, size=clients * tau)  # clients x tau seed draws
            np.add.at(a, picks, (rng.normal(0, 1, picks.size) / clients).astype(np.float32))
            drawn.append(int(picks.size))
            start = time.perf_counter()
            applied.append(store.load(a))
            seconds.append(time.perf_counter() - start)
        jumper = zo_parameters(_llama(*dims))
        start = time.perf_counter()
        full = VersionStore([p.data for p in jumper], seeds, 1e-4, Path(tmp) / "j").load(a)
        full_seconds = time.perf_counter() - start
        equal = _checksum(follower) == _checksum(jumper)
    return {"catchup_equals_full": equal, "params": n,
            "catchup_seed_passes_per_round": max(applied), "seeds_drawn_per_round": max(drawn),
            "catchup_seconds_per_round": float(np.median(seconds)),
            "full_load_seed_passes": full, "full_load_seconds": full_seconds,
            "catchup_seed_elems_per_s": float(np.sum(applied) * n / np.sum(seconds))}


def _memory_child(mode: str, hidden: int, layers: int, seeds_in_version: int) -> None:
    import transformers  # noqa: F401  (the runtime a client has loaded)

    if mode == "runtime":
        print(json.dumps({"peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
        return
    model = _llama(hidden, layers, 32000, 4 * hidden, max(1, hidden // 64))
    params = zo_parameters(model)
    weights = sum(p.numel() * 4 for p in params)
    seeds = derive_seeds(0, 4096)
    a = np.zeros(4096, np.float32)
    a[np.random.default_rng(0).choice(4096, seeds_in_version, replace=False)] = 0.5
    ids = torch.randint(0, 32000, (2, 32))
    with tempfile.TemporaryDirectory() as tmp:
        store = VersionStore([p.data for p in params], seeds, 1e-6, tmp)
        store.load(a)  # catch up to the round's version
        for t in range(4):  # tau ZO steps, in place
            zo_step(params, lambda: model(input_ids=ids, labels=ids).loss, seed=int(seeds[t]),
                    seed_index=t, eps=1e-3, lr=1e-6)
        store.mark_changed()
        store.restore()  # back to the version for the next message
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"peak": peak, "weights": weights,
                      "params": sum(p.numel() for p in params)}))


def bench_client_memory(hidden: int = 768, layers: int = 8, seeds_in_version: int = 16) -> dict:
    """Peak RSS of a client round / fp32 weights, each mode in its own process."""
    out = {}
    for mode in ("runtime", "fedkseed"):
        code = (f"from simulations.bench_versions import _memory_child; "
                f"_memory_child({mode!r}, {hidden}, {layers}, {seeds_in_version})")
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True, cwd=Path(__file__).resolve().parents[1])
        out[mode] = json.loads(run.stdout.strip().splitlines()[-1])
    r = out["fedkseed"]
    return {"memory_params": r["params"], "weights_bytes": r["weights"],
            "peak_bytes": r["peak"], "runtime_bytes": out["runtime"]["peak"],
            "peak_memory_ratio": r["peak"] / r["weights"],
            "peak_above_runtime_ratio": (r["peak"] - out["runtime"]["peak"]) / r["weights"]}


def bench_default_run(run_dir: str | None = None) -> dict:
    """The default FedKSeed simulation's held-out loss and payload (runs it unless given)."""
    if run_dir is None:
        tmp = tempfile.mkdtemp(prefix="fedtune-bench-")
        subprocess.run([sys.executable, "-m", "fedtune.cli", "simulate", "--algorithm",
                        "fedkseed", "--output-dir", tmp, "--name", "zo-default"], check=True,
                       capture_output=True)
        run_dir = str(next(Path(tmp).glob("zo-default-*")))
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").open()]
    first, last = rows[0]["eval_loss"], rows[-1]["eval_loss"]
    payload = max(r.get("payload_down_per_client", 0) + r.get("payload_up_per_client", 0)
                  for r in rows[1:])
    return {"default_run_unchanged": bool(last <= 0.7 * first and payload <= PAPER_BYTES),
            "default_eval_loss_first": first, "default_eval_loss_last": last,
            "default_rounds": len(rows) - 1, "default_payload_bytes": payload}
