"""FedKSeed's exact incremental versions at scale: equality, catch-up cost, memory, default run.

Used by ``simulations/bench_zo.py`` (which writes the ``--json`` report); each function returns
the figures it measured:

- :func:`bench_catch_up`: a party that follows every round and a party that jumps from w0 to the
  last version hold the same bits; seeds applied per round by the follower vs seeds drawn.
- :func:`bench_client_memory`: peak resident memory (VmHWM) of a FedKSeed client round (catch
  up, ZO steps, restore) in a fresh process, on a Llama of >= 50M parameters built in code, over
  the float32 weights' size; the peak is reset after the model is built (building a model in
  code peaks above its weights once per process), and the interpreter + torch + transformers
  runtime is measured in the same run and reported beside it.
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
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from fedtune.seeded import derive_seeds, zo_parameters, zo_step
from fedtune.seeded.versions import VersionStore

PAPER_BYTES = 4096 * 4 + 200 * (4 + 4)  # "under 18 kilobytes": 17,984
FUSED_SHAPES = ((1024, 1024), (1024, 1024), (1536, 1024), (512, 1024), (1024,), (1024,))



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


def _peak_rss() -> int:
    """The process's peak resident set (VmHWM) in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _reset_peak_rss() -> bool:
    """Start a new peak (Linux: writing 5 to clear_refs resets VmHWM to the current RSS)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _memory_child(mode: str, hidden: int, layers: int, seeds_in_version: int) -> None:
    import transformers  # noqa: F401  (the runtime a client has loaded)

    if mode == "runtime":
        print(json.dumps({"peak": _peak_rss()}))
        return
    model = _llama(hidden, layers, 32000, 4 * hidden, max(1, hidden // 64))
    # Building a model in code peaks above its weights (initialisation); a client loads it
    # once per process, so the round is measured from here on.
    build_peak = _peak_rss()
    reset = _reset_peak_rss()
    at_start = _rss()
    params = zo_parameters(model)
    weights = sum(p.numel() * 4 for p in params)
    seeds = derive_seeds(0, 4096)
    a = np.zeros(4096, np.float32)
    a[np.random.default_rng(0).choice(4096, seeds_in_version, replace=False)] = 0.5
    ids = torch.randint(0, 32000, (2, 32))
    with tempfile.TemporaryDirectory() as tmp:
        store = VersionStore([p.data for p in params], seeds, 1e-6, tmp)
        store.load(a)  # catch up to the round's version
        for t in range(2):  # ZO steps, in place
            zo_step(params, lambda: model(input_ids=ids, labels=ids).loss, seed=int(seeds[t]),
                    seed_index=t, eps=1e-3, lr=1e-6)
        store.mark_changed()
        store.restore()  # back to the version for the next message
    print(json.dumps({"peak": _peak_rss(), "weights": weights, "build_peak": build_peak,
                      "reset": reset, "at_start": at_start,
                      "params": sum(p.numel() for p in params)}))


def bench_client_memory(hidden: int = 1024, layers: int = 12, seeds_in_version: int = 16) -> dict:
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
            "model_build_peak_bytes": r["build_peak"], "round_peak_measured_alone": r["reset"],
            "peak_memory_ratio": r["peak"] / r["weights"],
            "peak_above_runtime_ratio": (r["peak"] - out["runtime"]["peak"]) / r["weights"],
            # what the round itself adds to the process that holds the model (w0, S, z buffers)
            "round_extra_ratio": (r["peak"] - r["at_start"]) / r["weights"]}


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


def memory_bandwidth(device: torch.device, mib: int = 256, repeats: int = 3) -> float:
    """Bytes per second of a large tensor copy (read + write), best of ``repeats``."""
    from simulations.bench_zo import timed  # bench_zo imports this module in its main()

    src = torch.ones(mib << 18, device=device)  # float32: mib MiB
    dst = torch.empty_like(src)
    best = timed({"copy": lambda: dst.copy_(src)}, repeats, device)["copy"]
    return 2 * src.numel() * src.element_size() / best


def bench_fused_replay(
    shapes: tuple[tuple[int, ...], ...] = FUSED_SHAPES,
    n_seeds: int = 256,
    threads: int | None = None,
    repeats: int = 3,
    device: str = "cpu",
    eager_seeds: int = 16,
) -> dict:
    """Today's per-seed float replay (``zo.replay_``) vs the fused integer kernel, side by side.

    Both apply the same ``n_seeds`` seeds to the same ``shapes`` (float32 weights for (a), int64
    exact sums for (b)); rates are seed-elements per second, best of ``repeats`` interleaved.
    ``bandwidth_fraction`` = (16 B x elements / copy bandwidth) / fused time: the share of the
    memory-bound time (one read + write of the int64 sums per pass) the kernel reaches.
    ``compile_seconds``: building and probing the chosen backend in this process (0 if already
    built). The eager paths are timed on ``eager_seeds`` seeds and the first tensor (0: skipped;
    OpenMP makes their many small ops slow on a busy machine). About 40 s on 2 idle CPU cores.
    """
    import fedtune.seeded as zo
    from fedtune.seeded import fused
    from simulations.bench_zo import timed

    dev = torch.device(device)
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        seeds = zo.derive_seeds(1, n_seeds)
        rng = np.random.default_rng(0)
        a = rng.normal(size=n_seeds).astype(np.float32)
        deltas = [int(x) for x in rng.integers(-(2**40), 2**40, size=n_seeds)]
        gen = torch.Generator().manual_seed(0)
        params = [torch.randn(s, generator=gen).to(dev) for s in shapes]
        w0 = [p.clone() for p in params]
        sums = [torch.zeros(p.numel(), dtype=torch.int64, device=dev) for p in params]
        n = sum(p.numel() for p in params)
        t0 = time.perf_counter()
        backend = fused.available_backend(dev)
        compile_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        compiled_ok = fused._ready("compiled", dev)
        compiled_s = time.perf_counter() - t0

        def fused_run(name: str, count: int, tensors: int = len(sums)) -> Callable[[], None]:
            def run() -> None:
                for i, acc in enumerate(sums[:tensors]):
                    fused.add_codes_(acc, seeds[:count], deltas[:count], i, backend=name)

            return run

        fns = {
            "per_seed": lambda: zo.replay_(params, w0, a, seeds, 1e-6),
            "fused": fused_run(backend, n_seeds),
        }
        if compiled_ok and backend != "compiled":
            fns["compiled"] = fused_run("compiled", n_seeds)
        best = timed(fns, repeats, dev)
        count = dict.fromkeys(best, n_seeds * n)
        if eager_seeds:  # the slow paths, on a sample: the first tensor and a few seeds
            small = min(eager_seeds, n_seeds)
            best |= timed({k: fused_run(k, small, 1) for k in ("eager", "batched")}, repeats, dev)
            count |= dict.fromkeys(("eager", "batched"), small * sums[0].numel())
        rate = {k: count[k] / t for k, t in best.items()}
        bandwidth = memory_bandwidth(dev)
        return {
            "replay_speedup_vs_per_seed": rate["fused"] / rate["per_seed"],
            "fused_seed_elems_per_s": rate["fused"],
            "per_seed_seed_elems_per_s": rate["per_seed"],
            "bandwidth_fraction": 16 * n / bandwidth / best["fused"],
            "compile_seconds": compile_s,
            "backend": backend,
            "compiled_seed_elems_per_s": rate.get("compiled"),
            "compiled_compile_seconds": compiled_s if compiled_ok else None,
            "eager_seed_elems_per_s": rate.get("eager"),
            "batched_eager_seed_elems_per_s": rate.get("batched"),
            "bandwidth_bytes_per_s": bandwidth,
            "elements": n,
            "seeds": n_seeds,
            "threads": torch.get_num_threads(),
            "device": str(dev),
        }
    finally:
        torch.set_num_threads(before)
