"""GPU check: what fedtune must show on a CUDA machine, in under 5 minutes.

    python -m simulations.gpu_check                     # from the project folder, with CUDA
    python -m simulations.gpu_check --json gpu.json     # also write the results as JSON
    python -m simulations.gpu_check --cpu-dry-run       # CPU halves only, small sizes (CI)

(a) z (``fedtune.seeded.perturbations``) and the replay (``fedtune.seeded.replay_``) are
    bit-identical on CPU and CUDA; so are ``fedtune.seeded.fused.add_codes_`` when that module
    exists and an exact
    version (``fedtune.seeded.versions.VersionStore``: A loaded incrementally and from zero);
(b) the default FedIT and FedKSeed runs learn on CUDA (the ServerApp's main on an in-process
    Grid of ClientApps, 3 small rounds): the final held-out loss is below round 0's; and FedIT
    run twice with ``deterministic = true`` gives the same bits (a third run, false, is timed);
    QLoRA (``quantization='nf4'``) learns on a Linear4bit base on CUDA, the same bits twice
    (skipped without bitsandbytes);
(c) throughput on CUDA in seed-elements/s (seeds applied x elements per second) of the replay,
    of one ZO perturbation pass, and of ``add_codes_`` when it exists;
(d) Ray with GPU fractions: ``fedtune simulate --rounds 2 --client-gpus 0.5`` on tiny finishes
    (skipped, with the reason, where Ray is not installed).

The dry run compares CPU against CPU by another route (z chunk by chunk, the replay and the
version with another chunk size), runs one small round of each algorithm on the CPU and parses
the Ray command without starting Ray, so every function here is exercised where no GPU is. Each
result is printed to stderr as it comes. Exit status: 0 when every check passed or was skipped,
1 when one failed, 2 without CUDA and without ``--cpu-dry-run``. The plan, the result type and
group (a) live in ``simulations/gpu_bits.py``; this module holds groups (b)-(d) and the runner.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.metadata
import importlib.util
import io
import json
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # tests.inprocess_grid and the apps, from a checkout
    sys.path.insert(0, str(ROOT))

from fedtune.seeded import (  # noqa: E402
    add_perturbation_,
    derive_seeds,
    replay_,
)
from simulations.gpu_bits import (  # noqa: E402, F401  (group (a); tests use them here)
    Plan,
    Result,
    _sync,
    check_add_codes,
    check_replay,
    check_version,
    check_z,
    fused_add_codes,
    fused_backends,
    plan_for,
    reference_add_codes_,
)


# ---- (b) learning runs --------------------------------------------------------------------------
def run_config(plan: Plan, algorithm: str, run_dir: Path) -> dict[str, Any]:
    """A default run of ``algorithm``, made small: fewer rounds, steps and examples."""
    flat: dict[str, Any] = {
        "algorithm": algorithm, "device": plan.other, "num-server-rounds": plan.rounds,
        "examples-per-client": plan.examples, "eval-examples": plan.eval_examples,
        "client-eval-examples": 4, "max-new-tokens": 4, "min-train-nodes": 2,
        "min-available-nodes": 3, "fraction-train": 1.0, "fraction-evaluate": 0.0,
        "run-dir": str(run_dir)}
    if algorithm == "fedit":
        flat["local-steps"] = plan.local_steps
    else:
        flat["zo-steps"] = plan.zo_steps
    return flat


def run_inprocess(flat: dict[str, Any], nodes: int = 3) -> list[dict[str, Any]]:
    """The ServerApp's main on an in-process Grid of ``nodes`` ClientApps; the metric rows."""
    from flwr.app import Context, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from client_app.app import app as client_app
    from server_app.app import main
    from tests.inprocess_grid import InProcessGrid

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
    grid = InProcessGrid(client_app, nodes, flat)
    main(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                       run_config=flat))
    lines = (Path(flat["run-dir"]) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def run_quiet(plan: Plan, algorithm: str, **extra: Any) -> tuple[list[dict[str, Any]], str]:
    """:func:`run_inprocess` of ``algorithm`` (config overrides ``extra``, underscores for
    dashes) in a scratch folder; its metric rows and what it printed."""
    printed = io.StringIO()  # the run's own round lines and tables: kept for a failure only
    with tempfile.TemporaryDirectory(prefix="fedtune-gpu-check-") as tmp, \
            contextlib.redirect_stdout(printed):
        flat = run_config(plan, algorithm, Path(tmp) / algorithm)
        flat.update({key.replace("_", "-"): value for key, value in extra.items()})
        rows = run_inprocess(flat)
    return rows, printed.getvalue()


def check_learning(plan: Plan, algorithm: str, name: str = "", **extra: Any) -> Result:
    """A small default run of ``algorithm`` (config overrides ``extra``) on ``plan.other``:
    every round aggregates and the final held-out loss is below round 0's."""
    cuda = plan.other.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    rows, printed = run_quiet(plan, algorithm, **extra)
    first, last = rows[0]["eval_loss"], rows[-1]["eval_loss"]
    rounds_ok = len(rows) == plan.rounds + 1 and all(r["clients"] >= 2 for r in rows[1:])
    peak = torch.cuda.max_memory_allocated() if cuda else 0
    ok = rounds_ok and last < first and (peak > 0 or not cuda)
    return Result(f"b/{name or algorithm}", "pass" if ok else "fail",
                  f"eval_loss {first:.3f} -> {last:.3f} in {len(rows) - 1} rounds on "
                  f"{plan.other}" + (f", peak {peak / 2**20:.0f} MiB" if cuda else ""),
                  data={"eval_loss": [r["eval_loss"] for r in rows],
                        "train_loss": [r.get("train_loss") for r in rows[1:]],
                        "peak_cuda_bytes": peak, "output_tail": "" if ok else printed[-4000:]})


def losses(rows: list[dict[str, Any]]) -> list[Any]:
    """Every round's held-out and training loss, as recorded (bits compared)."""
    return [(r["eval_loss"], r.get("train_loss")) for r in rows]


def check_deterministic(plan: Plan) -> Result:
    """FedIT twice with ``deterministic = true`` on ``plan.other``: the same losses bit for bit;
    a third run with false is timed against them (and said whether it matched)."""
    previous = torch.are_deterministic_algorithms_enabled()
    runs: dict[str, tuple[list[Any], float]] = {}
    try:
        for name, flag in (("on", True), ("again", True), ("off", False)):
            _sync(plan.other)
            t0 = time.perf_counter()
            rows, _ = run_quiet(plan, "fedit", deterministic=flag)
            _sync(plan.other)
            runs[name] = (losses(rows), time.perf_counter() - t0)
    finally:
        torch.use_deterministic_algorithms(previous)
    same = runs["on"][0] == runs["again"][0]
    off_same = runs["off"][0] == runs["on"][0]
    ratio = min(runs["on"][1], runs["again"][1]) / runs["off"][1]
    return Result("b/deterministic", "pass" if same else "fail",
                  f"two FedIT runs {'identical' if same else 'DIFFER'}; with deterministic=false "
                  f"{'identical' if off_same else 'different'}, time on/off {ratio:.2f}",
                  data={"identical": same, "off_identical": off_same, "time_ratio_on_off": ratio,
                        "losses": {k: v[0] for k, v in runs.items()},
                        "seconds": {k: v[1] for k, v in runs.items()}})


def check_qlora(plan: Plan) -> list[Result]:
    """QLoRA on ``plan.other``: FedIT with ``quantization='nf4'`` (compute dtype auto: bfloat16
    on CUDA) learns, its base's linear layers are bitsandbytes' Linear4bit on that device, and
    a second run gives the same losses bit for bit. Skipped where bitsandbytes is not
    installed (``pip install -e ".[quantization]"``)."""
    if importlib.util.find_spec("bitsandbytes") is None:
        return [Result("b/qlora", "skip", "bitsandbytes is not installed "
                                          "(pip install -e \".[quantization]\")")]
    from fedtune.algorithms.fedit.model import peft_model_for
    from fedtune.config import Config

    cuda = plan.other.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    rows, printed = run_quiet(plan, "fedit", quantization="nf4")
    peak = torch.cuda.max_memory_allocated() if cuda else 0
    flat = {**run_config(plan, "fedit", Path("unused")), "quantization": "nf4"}
    model, _ = peft_model_for(Config.from_flat(flat))  # the runs' model, cached in-process
    layer = model.get_base_model().model.layers[0].self_attn.q_proj.get_base_layer()
    kind, where = type(layer).__name__, layer.weight.device.type
    first, last = rows[0]["eval_loss"], rows[-1]["eval_loss"]
    rounds_ok = len(rows) == plan.rounds + 1 and all(r["clients"] >= 2 for r in rows[1:])
    ok = rounds_ok and last < first and kind == "Linear4bit" and where == plan.other
    learns = Result("b/qlora", "pass" if ok else "fail",
                    f"nf4 eval_loss {first:.3f} -> {last:.3f} in {len(rows) - 1} rounds, base "
                    f"{kind} on {where}" + (f", peak {peak / 2**20:.0f} MiB" if cuda else ""),
                    data={"eval_loss": [r["eval_loss"] for r in rows], "layer": kind,
                          "device": where, "peak_cuda_bytes": peak,
                          "output_tail": "" if ok else printed[-4000:]})
    if plan.dry_run:  # CPU determinism is tests/test_quantization.py's (exact resume)
        return [learns, Result("b/qlora-deterministic", "skip", "dry run: CUDA only")]
    again, _ = run_quiet(plan, "fedit", quantization="nf4")
    same = losses(again) == losses(rows)
    return [learns, Result("b/qlora-deterministic", "pass" if same else "fail",
                           f"two nf4 FedIT runs {'identical' if same else 'DIFFER'}",
                           data={"losses": [losses(rows), losses(again)]})]


# ---- (c) throughput -----------------------------------------------------------------------------
def _best(fn: Callable[[], object], device: str, repeats: int) -> float:
    fn()  # warm-up (kernels, tables, workspaces)
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def _rate(name: str, seed_elements: int, seconds: float, device: str) -> Result:
    rate = seed_elements / seconds
    return Result(name, "pass", f"{rate:.3g} seed-elements/s on {device} "
                  f"({seed_elements:,} in {seconds * 1e3:.1f} ms)",
                  data={"seed_elements_per_s": rate, "seed_elements": seed_elements,
                        "seconds": seconds})


def check_throughput(plan: Plan) -> list[Result]:
    """Seed-elements/s of what exists on ``plan.other``: the replay (``plan.bench_seeds`` seeds
    per pass), one perturbation pass (one seed), and ``add_codes_`` if present."""
    dev = plan.other
    params = [torch.zeros(n, device=dev) for n in plan.bench_tensors]
    base = [p.clone() for p in params]
    total = sum(plan.bench_tensors)
    k = plan.bench_seeds
    seeds = derive_seeds(1, k)
    a = np.random.default_rng(1).normal(size=k).astype(np.float32)
    out = [
        _rate("c/replay_", k * total,
              _best(lambda: replay_(params, base, a, seeds, 1e-6), dev, plan.repeats), dev),
        _rate("c/add_perturbation_", total,
              _best(lambda: add_perturbation_(params, int(seeds[0]), 1e-3), dev, plan.repeats),
              dev),
    ]
    add_codes_ = fused_add_codes()
    if add_codes_ is None:
        out.append(Result("c/add_codes_", "skip", "fedtune.seeded.fused.add_codes_ is not present"))
        return out
    sums = [torch.zeros(n, dtype=torch.int64, device=dev) for n in plan.bench_tensors]
    deltas = torch.ones(k, dtype=torch.int64)
    seed_list = [int(s) for s in seeds]

    def codes() -> None:
        for index, s in enumerate(sums):
            add_codes_(s, seed_list, deltas, index, 0)

    out.append(_rate("c/add_codes_", k * total, _best(codes, dev, plan.repeats), dev))
    return out


# ---- (d) Ray with GPU fractions -----------------------------------------------------------------
def ray_argv(run_dir: Path) -> list[str]:
    """``fedtune simulate`` on tiny, 2 rounds, two clients sharing the GPU (0.5 each)."""
    overrides = ("local-steps=2 examples-per-client=16 eval-examples=8 client-eval-examples=4 "
                 f"max-new-tokens=2 fraction-train=1.0 run-dir={shlex.quote(str(run_dir))}")
    return ["simulate", "--model", "tiny", "--rounds", "2", "--num-clients", "2",
            "--client-gpus", "0.5", "--run-config", overrides]


def check_ray(plan: Plan) -> Result:
    """Run :func:`ray_argv` in a fresh process and read its summary (dry run: parse only;
    skipped where Ray is not installed)."""
    if not plan.dry_run and importlib.util.find_spec("ray") is None:
        return Result("d/ray", "skip", "Ray is not installed here (pip install 'flwr[simulation]')")
    with tempfile.TemporaryDirectory(prefix="fedtune-gpu-ray-") as tmp:
        run_dir = Path(tmp) / "ray"
        argv = ray_argv(run_dir)
        if plan.dry_run:
            from fedtune.cli import build_parser, resolve_config

            args = build_parser().parse_args(argv)
            cfg = resolve_config(args)
            ok = (args.client_gpus == 0.5 and cfg.server.num_server_rounds == 2
                  and cfg.output.run_dir == str(run_dir))
            return Result("d/ray", "skip" if ok else "fail",
                          "dry run: Ray not started; the command parses" if ok
                          else "the command does not parse as intended",
                          data={"argv": argv})
        proc = subprocess.run([sys.executable, "-m", "fedtune.cli", *argv], cwd=ROOT,
                              capture_output=True, text=True, timeout=plan.ray_timeout)
        summary = run_dir / "summary.json"
        rounds = json.loads(summary.read_text())["rounds"] if summary.exists() else None
        ok = proc.returncode == 0 and rounds == 2
        tail = (proc.stdout + proc.stderr)[-2000:]
        return Result("d/ray", "pass" if ok else "fail",
                      f"exit {proc.returncode}, {rounds} rounds in the summary",
                      data={"argv": argv, "returncode": proc.returncode, "rounds": rounds,
                            "output_tail": "" if ok else tail})


# ---- running and reporting ----------------------------------------------------------------------
def check_fedit(plan: Plan) -> Result:
    return check_learning(plan, "fedit")


def check_fedkseed(plan: Plan) -> Result:
    return check_learning(plan, "fedkseed")


def check_vera(plan: Plan) -> Result:
    """A PEFT method other than LoRA (VeRA: shared frozen projections built on the device from
    peft's PRNG key, only the scaling vectors trained and sent) learns on ``plan.other``."""
    return check_learning(plan, "fedit", "vera", peft_method="vera", lr=2e-2)


Check = Callable[[Plan], Result | list[Result]]
CHECKS: dict[str, list[Check]] = {
    "a": [check_z, check_replay, check_add_codes, check_version],
    "b": [check_fedit, check_fedkseed, check_deterministic, check_qlora, check_vera],
    "c": [check_throughput],
    "d": [check_ray],
}


def _guarded(group: str, fn: Check, plan: Plan) -> list[Result]:
    """``fn``'s results, timed; an exception becomes one ``error`` result, not a crash."""
    t0 = time.perf_counter()
    try:
        got = fn(plan)
    except Exception as err:  # report and go on with the other checks
        got = Result(f"{group}/{fn.__name__}", "error", f"{type(err).__name__}: {err}"[:300])
    results = got if isinstance(got, list) else [got]
    seconds = (time.perf_counter() - t0) / len(results)
    for r in results:
        r.seconds = r.seconds or seconds
    return results


def run_checks(plan: Plan, groups: str = "abcd",
               report: Callable[[Result], None] | None = None) -> list[Result]:
    """Every check of ``groups`` (letters of :data:`CHECKS`), in order; ``report`` is called
    with each result as it comes."""
    results = []
    for g in groups:
        for fn in CHECKS[g]:
            for r in _guarded(g, fn, plan):
                results.append(r)
                if report is not None:
                    report(r)
    return results


def print_progress(r: Result) -> None:
    print(f"gpu_check: {r.check} {r.status} ({r.seconds:.1f} s): {r.summary}", file=sys.stderr,
          flush=True)


def format_table(results: list[Result]) -> str:
    width = max(len(r.check) for r in results)
    lines = [f"{'check':<{width}}  status  seconds  result", "-" * (width + 40)]
    lines += [f"{r.check:<{width}}  {r.status:<6}  {r.seconds:7.1f}  {r.summary}"
              for r in results]
    return "\n".join(lines)


def environment() -> dict[str, Any]:
    """Versions and the GPU, as recorded in the JSON report."""
    cuda = torch.cuda.is_available()
    versions = {}
    for name in ("flwr", "transformers", "peft", "numpy"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {"torch": torch.__version__, "cuda": torch.version.cuda if cuda else None,
            "gpu": torch.cuda.get_device_name(0) if cuda else None,
            "capability": list(torch.cuda.get_device_capability(0)) if cuda else None,
            "python": sys.version.split()[0], **versions}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulations.gpu_check",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", metavar="PATH", help="write the results here as JSON")
    parser.add_argument("--cpu-dry-run", action="store_true",
                        help="CPU halves only, small sizes, no Ray (what CI runs)")
    parser.add_argument("--only", default="abcd", help="check groups to run, e.g. 'ab'")
    args = parser.parse_args(argv)
    if unknown := set(args.only) - set(CHECKS):
        parser.error(f"--only: unknown groups {sorted(unknown)}; choose from 'abcd'")
    if not args.cpu_dry_run and not torch.cuda.is_available():
        print("gpu_check: CUDA is not available; --cpu-dry-run runs the CPU halves only",
              file=sys.stderr)
        return 2
    plan = plan_for(args.cpu_dry_run)
    threads = torch.get_num_threads()
    if plan.dry_run:  # tiny tensors gain nothing from threads, and they crawl on a busy CPU
        torch.set_num_threads(1)
    t0 = time.perf_counter()
    try:
        results = run_checks(plan, args.only, report=print_progress)
    finally:
        torch.set_num_threads(threads)
    seconds = time.perf_counter() - t0
    ok = all(r.status in ("pass", "skip") for r in results)
    print(format_table(results))
    print(f"{'ok' if ok else 'FAILED'} in {seconds:.1f} s"
          + (" (CPU dry run)" if plan.dry_run else ""))
    if args.json:
        report = {"ok": ok, "dry_run": plan.dry_run, "device": plan.other, "seconds": seconds,
                  **environment(), "results": [asdict(r) for r in results]}
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
