"""Load benchmark: the real Flower simulation (``fedtune simulate``, Ray) at growing sizes.

    python -m simulations.bench_load                      # 10, 100 and 1,000 virtual clients
    python -m simulations.bench_load --sizes 10,100 --identify-batch 0   # all at once

Each size runs in its own process through ``fedtune simulate`` (tiny model, one local step,
``--sampled`` clients per round, no federated evaluation) while this script samples the memory
of that process (the ServerApp runs in it) and of its whole process tree (Ray's raylet, GCS
and workers). Per size it prints round 1 (it identifies every node once), the server's
per-round overhead of the later rounds (round wall time minus the clients' training time:
``sampled x seconds_train / workers``, the rows' mean client time spread over the Ray workers)
and the peak memory, each also as a ratio to the smallest size measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

SMALL = ("local-steps=1 batch-size=2 examples-per-client=8 eval-examples=4 "
         "client-eval-examples=2 max-new-tokens=1 fraction-evaluate=0 min-train-nodes=2")


def _rss(proc: psutil.Process) -> tuple[int, int]:
    """(RSS of ``proc``, RSS summed over it and its descendants), bytes."""
    try:
        own = proc.memory_info().rss
        kids = proc.children(recursive=True)
    except psutil.Error:
        return 0, 0
    total = own
    for kid in kids:
        try:
            total += kid.memory_info().rss
        except psutil.Error:
            pass
    return own, total


def run_size(clients: int, rounds: int, sampled: int, out: Path, identify_batch: int | None,
             client_cpus: float) -> dict[str, Any]:
    """One ``fedtune simulate`` of ``clients`` virtual clients; its rows and peak memory."""
    args = ["simulate", "--num-clients", str(clients), "--rounds", str(rounds),
            "--output-dir", str(out), "--name", f"load{clients}", "--client-cpus",
            str(client_cpus), "--run-config",
            f"{SMALL} fraction-train={sampled / clients!r} min-available-nodes={clients}"]
    patch = ("" if identify_batch is None else
             f"import fedtune.flower.registry as l; l.IDENTIFY_BATCH = {identify_batch or 10**9}; ")
    code = f"{patch}import sys; from fedtune.cli import main; sys.exit(main({args!r}))"
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    ps = psutil.Process(proc.pid)
    peak_own = peak_tree = 0
    while proc.poll() is None:
        own, tree = _rss(ps)
        peak_own, peak_tree = max(peak_own, own), max(peak_tree, tree)
        time.sleep(0.25)
    output = proc.stdout.read() if proc.stdout else ""
    if proc.returncode != 0:
        raise SystemExit(f"{clients} clients: fedtune simulate exited {proc.returncode}:\n"
                         f"{output[-3000:]}")
    (run,) = out.glob(f"load{clients}-*")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {"clients": clients, "rows": rows, "wall": time.perf_counter() - start,
            "peak_server": peak_own, "peak_tree": peak_tree}


def overhead(row: dict[str, Any], workers: int) -> float:
    """Round wall time minus the clients' training time spread over the Ray workers."""
    sampled = row.get("sampled") or row.get("clients") or 0
    train = (row.get("seconds_train") or 0.0) * sampled / max(1, min(workers, sampled))
    return row["seconds"] - train


def summarize(result: dict[str, Any], workers: int) -> dict[str, float]:
    rows = result["rows"][1:]
    later = [overhead(r, workers) for r in rows[1:]] or [overhead(rows[0], workers)]
    return {"round1": rows[0]["seconds"], "overhead": sum(later) / len(later),
            "server_mb": result["peak_server"] / 2**20, "tree_mb": result["peak_tree"] / 2**20,
            "wall": result["wall"]}


def report(results: list[dict[str, Any]], workers: int) -> str:
    """The table, ratios against the first (smallest) size."""
    stats = [summarize(r, workers) for r in results]
    base = stats[0]
    lines = [f"{'clients':>8} | {'round 1 s':>14} | {'overhead/round s':>18} | "
             f"{'server peak MB':>16} | {'tree peak MB':>16} | {'wall s':>7}"]
    for r, s in zip(results, stats, strict=True):
        lines.append(
            f"{r['clients']:>8} | {s['round1']:7.1f} ({s['round1'] / base['round1']:4.1f}x) | "
            f"{s['overhead']:9.2f} ({s['overhead'] / base['overhead']:5.2f}x) | "
            f"{s['server_mb']:7.0f} ({s['server_mb'] / base['server_mb']:4.2f}x) | "
            f"{s['tree_mb']:7.0f} ({s['tree_mb'] / base['tree_mb']:4.2f}x) | {s['wall']:7.0f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100,1000", help="virtual clients, comma list")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sampled", type=int, default=10, help="clients per round")
    parser.add_argument("--client-cpus", type=float, default=1.0)
    parser.add_argument("--identify-batch", type=int, default=None,
                        help="override fedtune.flower.registry.IDENTIFY_BATCH (0: all at once)")
    parser.add_argument("--out", default="", help="keep the run folders here")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    workers = max(1, int((os.cpu_count() or 1) // args.client_cpus))
    with tempfile.TemporaryDirectory(prefix="fedtune-load-") as tmp:
        out = Path(args.out or tmp)
        out.mkdir(parents=True, exist_ok=True)
        results = []
        for n in sizes:
            results.append(run_size(n, args.rounds, args.sampled, out, args.identify_batch,
                                    args.client_cpus))
            s = summarize(results[-1], workers)
            print(f"{n} clients: round 1 {s['round1']:.1f} s, overhead {s['overhead']:.2f} "
                  f"s/round, peak {s['server_mb']:.0f} MB server, {s['tree_mb']:.0f} MB tree",
                  flush=True)
    print(report(results, workers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
