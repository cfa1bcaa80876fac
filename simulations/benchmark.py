"""Research benchmark runner: several methods on the same model, data and budget.

    python -m simulations.benchmark --suite smoke            # < 10 min on a 2-core CPU
    python -m simulations.benchmark --suite smoke --seeds 0 1 2

Each (method, seed) runs ``fedtune simulate`` in its own process (FedIT and FedKSeed in
Flower's Simulation Engine; the local and centralized baselines in-process), while a sampler
records the peak resident memory of the whole process tree (Ray workers included). The suite
writes ``results.md`` (a Markdown table: final and best metric, final held-out loss, bytes per
client per round, total bytes per client, wall time, peak memory; mean ± std over seeds; the
package versions and seeds) and ``results.png`` (held-out loss and metric per round). The
``privacy`` suite also writes ``privacy.md`` and ``privacy.png`` (held-out loss against epsilon,
:mod:`simulations.privacy_report`); the ``lora-aggregation`` suites write ``lora.md`` and
``lora.png`` (held-out loss against bytes per client, :mod:`simulations.lora_report`); the
``frontier`` suite writes ``frontier.md`` and ``frontier.png`` (every method's final held-out loss
against bytes, client memory and compute, :mod:`simulations.frontier_report`).

``--suite privacy`` also runs its 1,000-client part, ``privacy-1000`` (written to
``benchmarks/privacy-1000``; ``--suite privacy-1000`` runs it alone): 1,000 virtual clients on
the in-process grid (:mod:`simulations.inprocess_simulate`, no Ray), FedIT and FedKSeed with
DP off and at epsilon <= 8, reported as ``population.md`` / ``population.png``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from fedtune.algorithms.fedit.config import AGGREGATIONS
from simulations.frontier_methods import FRONTIER_ALGORITHMS, FRONTIER_COMMON, FRONTIER_METHODS


@dataclass(frozen=True)
class Suite:
    description: str
    metric: str  # the task metric column: exact_match or rouge_l
    num_clients: int
    common: str  # --run-config overrides shared by every method
    methods: dict[str, str] = field(default_factory=dict)  # method -> extra overrides
    recipe: str | None = None
    algorithms: dict[str, str] = field(default_factory=dict)  # method -> --algorithm if not
    # the method's own name
    privacy: bool = False  # also write the privacy-utility table and plot (privacy_report)
    lora_report: bool = False  # also write the LoRA-aggregation table and plot (lora_report)
    full_report: bool = False  # also write the full-parameter table (fullparam_report)
    engine: str = "ray"  # "ray": fedtune simulate; "inprocess": simulations.inprocess_simulate
    population_report: bool = False  # the 1,000-client DP table and plot (privacy_report)
    frontier_report: bool = False  # the bytes-quality-memory frontier (frontier_report)
    then: tuple[str, ...] = ()  # suites that `--suite <this>` runs after it


#: The privacy suite's noise multipliers. With 8 rounds, 16 of 64 clients per round (fixed-size
#: sampling without replacement) and delta = 0.1/64 the RDP accountant gives epsilon = 344, 21.5
#: and 6.2 for z = 0.3, 1 and 2 (z = 4 would give 2.4, z = 0.5 116); z = 0 is unbounded.
PRIVACY_Z = (0.0, 0.3, 1.0, 2.0)


def _privacy_methods() -> tuple[dict[str, str], dict[str, str]]:
    """Per algorithm, one dp=off reference and one dp=server run per z: overrides, algorithms."""
    methods: dict[str, str] = {}
    algorithms: dict[str, str] = {}
    for algorithm, steps in (("fedit", "local-steps=10"), ("fedkseed", "zo-steps=40")):
        runs = {"off": "dp=off"} | {f"z{z:g}": f"dp=server dp-noise-multiplier={z:g}"
                                    for z in PRIVACY_Z}
        for tag, dp in runs.items():
            methods[f"{algorithm}-{tag}"] = f"{steps} {dp}"
            algorithms[f"{algorithm}-{tag}"] = algorithm
    return methods, algorithms


PRIVACY_METHODS, PRIVACY_ALGORITHMS = _privacy_methods()

#: The 1,000-client part of the privacy suite. N clients, M sampled per round (fixed size,
#: without replacement), ROUNDS_1K rounds, delta = 0.1 / N (the default). Z_1K is the smallest
#: noise multiplier on a 0.05 grid whose epsilon after ROUNDS_1K rounds is <= EPSILON_1K by
#: fedtune.privacy.accountant (tests/test_benchmark_privacy.py recomputes it).
POPULATION_1K, PER_ROUND_1K, ROUNDS_1K, EPSILON_1K = 1000, 100, 6, 8.0
Z_1K = 1.3
#: The clip norms: the median of the contributions' L2 norms (as DP would clip them) in dp=off
#: probes with these settings (update-norms.jsonl), pooled over their rounds and rounded to one
#: significant digit. FedIT, 3 rounds: median 2.29, 1.38, 0.29 per round, pooled 1.38 -> 1;
#: FedKSeed, 2 rounds of 20 clients: 23.8, 35.4, pooled 27.2 -> 30. The suite's own 6-round
#: dp=off runs (seed 0) give the same C: pooled medians 1.42 (2.29 in round 1 down to 0.30 in
#: round 6: the learning rate decays over the run) and 27.5 (29.2 to 25.9).
CLIP_1K = {"fedit": 1.0, "fedkseed": 30.0}
#: Client work per round, sized for a loaded 2-core machine (1 round = 100 client calls).
STEPS_1K = {"fedit": "local-steps=4", "fedkseed": "zo-steps=5"}


def _population_methods() -> tuple[dict[str, str], dict[str, str]]:
    """Per algorithm, dp=off and dp=server at (Z_1K, CLIP_1K): overrides, algorithms."""
    methods: dict[str, str] = {}
    algorithms: dict[str, str] = {}
    for algorithm, steps in STEPS_1K.items():
        methods[f"{algorithm}-1k-off"] = f"{steps} dp=off"
        methods[f"{algorithm}-1k-dp"] = (f"{steps} dp=server dp-noise-multiplier={Z_1K:g} "
                                         f"dp-clip-norm={CLIP_1K[algorithm]:g}")
        algorithms[f"{algorithm}-1k-off"] = algorithms[f"{algorithm}-1k-dp"] = algorithm
    return methods, algorithms


POPULATION_METHODS, POPULATION_ALGORITHMS = _population_methods()

ALL = ("fedit", "fedkseed", "fedkseed-pro", "ferret", "local", "centralized")

#: The LoRA aggregation variants of FedIT (the ``lora-aggregation`` config key), each run with
#: ``--algorithm fedit``.
LORA_METHODS = {m: f"lora-aggregation={m}" for m in AGGREGATIONS}
#: Heterogeneous client ranks (assigned by partition) for the variants that support them.
LORA_HET_METHODS = {f"{m}-het": f"lora-aggregation={m} lora-ranks=4,8,16"
                    for m in ("fedit", "flora")}
#: FLoRA with the official code's restart: a fresh initialisation per client and round.
LORA_RESTART_METHODS = {"flora-fresh": "lora-aggregation=flora lora-restart-init=fresh"}

SUITES = {
    "smoke": Suite(
        "tiny model, built-in tasks, 8 clients (4 per round), 6 rounds",
        metric="exact_match", num_clients=8,
        common="num-server-rounds=6 eval-examples=48 max-new-tokens=6 fraction-evaluate=0.0",
        methods={"fedit": "", "fedkseed": "zo-steps=100", "fedkseed-pro": "zo-steps=100",
                 "ferret": "", "local": "", "centralized": ""},
    ),
    "tiny": Suite(
        "tiny model, built-in tasks, 8 clients (4 per round), the default 12 rounds",
        metric="exact_match", num_clients=8, common="",
        methods={m: "" for m in ALL},
    ),
    # Federated full-parameter tuning: FedKSeed, FedKSeed-Pro and Ferret at their defaults (the
    # default run: 8 clients, 4 per round, 12 rounds), FedIT (LoRA) as the reference;
    # full-parameter.md adds rounds to FedKSeed's final loss and the clients' compute time.
    "full-parameter": Suite(
        "full-parameter tuning (FedKSeed, FedKSeed-Pro, Ferret; FedIT for reference), tiny "
        "model, built-in tasks, 8 clients (4 per round), 12 rounds",
        metric="exact_match", num_clients=8, common="",
        methods={"fedkseed": "", "fedkseed-pro": "", "ferret": "", "fedit": ""},
        full_report=True,
    ),
    # The same on Natural Instructions (the fedkseed-ni recipe; Ferret with ferret-ni's
    # settings), cut to 3 rounds with Rouge-L of 32 tokens to fit a loaded 2-core CPU: an
    # evaluation (179 answers) takes ~6 min there, so FedKSeed and FedIT are evaluated at
    # rounds 0 and 3 only, Ferret every round (its held-out loss must fall round over round).
    # One process per run (the in-process grid): no Ray workers to import a tree mid-change.
    "full-parameter-ni": Suite(
        "full-parameter tuning on Natural Instructions (FedKSeed setup), stories260k, 40 "
        "clients (2 per round), 3 rounds",
        metric="rouge_l", num_clients=40, recipe="fedkseed-ni",
        common="num-server-rounds=3 max-new-tokens=32",
        methods={"fedkseed": "eval-every=3", "fedkseed-pro": "eval-every=3",
                 "ferret": "local-steps=10 grad-accum=4 seeds-equal-weights=true "
                           "lr-schedule=constant",
                 "fedit": "eval-every=3"},
        full_report=True, engine="inprocess",
    ),
    "ni-stories260k": Suite(
        "Natural Instructions (FedKSeed setup) on stories260k: one client per train task",
        metric="rouge_l", num_clients=40, common="", recipe="fedkseed-ni",
        methods={"fedit": "", "fedkseed": "", "fedkseed-pro": ""},
    ),
    "dolly-stories260k": Suite(
        "Dolly-15k, the FedIT split (10 clients) on stories260k",
        metric="rouge_l", num_clients=10, common="", recipe="fedit-dolly",
        methods={"fedit": "", "fedkseed": "", "local": "", "centralized": ""},
    ),
    # Probes on this 2-core CPU (tiny model, 64 clients, 16 per round): a FedIT round with
    # local-steps=10 takes ~6 s, a FedKSeed round with zo-steps=50 ~19 s (~1.2 s per client; the
    # default 200 steps would be ~75 s), and each run starts in ~15-20 s. Both learn in 8 rounds
    # without noise (held-out loss 6.19 -> 2.8 FedIT, -> 4.7 FedKSeed), so: 8 rounds, FedKSeed
    # at zo-steps=40, a one-epoch FedIT round (10 steps x batch 8 = examples-per-client=80),
    # the cheap centralized eval every round (48 examples, 6 new tokens), no federated eval.
    # Measured (docs/bench-privacy.md): FedIT runs 60-75 s, FedKSeed 135-150 s on an idle
    # machine; 10 runs per seed ~ 18 min, 2 seeds ~ 35 min. Noise: 4-round probes put the cliff
    # between z = 0.3 and 1 for both (the noise per coordinate of the mean, z C / 16, swamps a
    # clipped update spread over ~140k LoRA or 4096 seed coordinates), so z = 0.3 (large
    # epsilon, still learns), 1 and 2 (epsilon 21.5 and 6.2), and z = 0 (clipping only).
    "privacy": Suite(
        "privacy-utility of user-level central DP (dp=server, default C: 1 FedIT, 100 FedKSeed), "
        "tiny model, built-in tasks, 64 clients (16 per round), 8 rounds",
        metric="exact_match", num_clients=64,  # --num-clients sets min-available-nodes=64
        common="num-server-rounds=8 fraction-train=0.25 min-train-nodes=16 "
               "examples-per-client=80 eval-examples=48 max-new-tokens=6 fraction-evaluate=0.0",
        methods=PRIVACY_METHODS, algorithms=PRIVACY_ALGORITHMS, privacy=True,
        then=("privacy-1000",),
    ),
    # DP at a population where it can learn (issue #25, item 8): 1,000 clients, 100 per round,
    # on the in-process grid. One client call (tiny model, batch 8) costs ~0.35 s plus ~0.2 s
    # per FedIT step or ~0.14 s per FedKSeed ZO step on this 2-core machine under the other
    # agents' load (measured with 1-round probes), hence 4 local steps (one epoch of 32
    # examples) and 8 ZO steps.
    "privacy-1000": Suite(
        f"user-level DP at {POPULATION_1K:,} clients: tiny model, built-in tasks, "
        f"{PER_ROUND_1K} clients per round, {ROUNDS_1K} rounds, dp=server at z={Z_1K:g} "
        f"(epsilon <= {EPSILON_1K:g}, delta = 0.1/{POPULATION_1K}) against dp=off",
        metric="exact_match", num_clients=POPULATION_1K,
        common=f"num-server-rounds={ROUNDS_1K} fraction-train={PER_ROUND_1K / POPULATION_1K:g} "
               f"min-train-nodes={PER_ROUND_1K} examples-per-client=32 eval-examples=48 "
               "max-new-tokens=6 fraction-evaluate=0.0",
        methods=POPULATION_METHODS, algorithms=POPULATION_ALGORITHMS, engine="inprocess",
        population_report=True,
    ),
    # The cost of secure aggregation at the default sizes (the default run of each algorithm:
    # 8 clients, 4 per round, 12 rounds): bytes per client per round (the protocol's own
    # exchanges included) and wall time, with and without it.
    "secagg": Suite(
        "cost of secure aggregation (SecAgg+), default runs: tiny model, built-in tasks, "
        "8 clients (4 per round), 12 rounds",
        # federated evaluation is refused under secagg (each client's loss would be in the clear):
        # off for every method, so the bytes and times compare like with like
        metric="exact_match", num_clients=8, common="fraction-evaluate=0.0",
        methods={"fedit": "", "fedit-secagg": "secagg=on", "fedkseed": "",
                 "fedkseed-secagg": "secagg=on"},
        algorithms={"fedit-secagg": "fedit", "fedkseed-secagg": "fedkseed"},
    ),
    # FedIT's LoRA aggregation variants at the default sizes (the default run: 12 rounds), and
    # fedit and flora also with heterogeneous client ranks 4, 8, 16 (by partition); lora.md /
    # lora.png compare held-out loss with the bytes each client sends and receives.
    "lora-aggregation": Suite(
        "LoRA aggregation variants, tiny model, built-in tasks (non-IID default split), "
        "8 clients (4 per round), 12 rounds",
        metric="exact_match", num_clients=8, common="",
        methods=LORA_METHODS | LORA_HET_METHODS | LORA_RESTART_METHODS,
        algorithms={m: "fedit" for m in LORA_METHODS | LORA_HET_METHODS |
                    LORA_RESTART_METHODS}, lora_report=True,
    ),
    # The same variants on the FedIT Dolly split, cut to 4 rounds of 10 local steps (the recipe:
    # 8 rounds of 20) so that 5 methods fit a CPU budget.
    "lora-aggregation-dolly": Suite(
        "LoRA aggregation variants on Dolly-15k, the FedIT split (10 clients, 5 per round) on "
        "stories260k; 4 rounds of 10 local steps, Rouge-L of 24 new tokens every 2 rounds (the "
        "recipe: 8 rounds of 20 steps, 48 tokens every round)",
        # On this 2-core CPU a run of the recipe's evaluation (80 answers of 48 tokens) takes
        # 55 s and a round of training 26 s: every 2 rounds at 24 tokens keeps 15 runs in ~1 h.
        metric="rouge_l", num_clients=10,
        common="num-server-rounds=4 local-steps=10 eval-every=2 max-new-tokens=24",
        recipe="fedit-dolly", methods=LORA_METHODS | LORA_RESTART_METHODS,
        algorithms={m: "fedit" for m in LORA_METHODS | LORA_RESTART_METHODS}, lora_report=True,
    ),
    # Every method fedtune has on the same data and rounds (issue #29): final held-out loss
    # against bytes per client per round, with one client round's memory and compute measured
    # in a fresh process (simulations.client_round) on stories260k and on a 134M Llama.
    "frontier": Suite(
        "the bytes-quality-memory frontier: every method, stories260k (pretrained), built-in "
        "tasks, 8 clients (4 per round), 4 rounds of 10 local steps",
        metric="exact_match", num_clients=8, common=FRONTIER_COMMON, methods=FRONTIER_METHODS,
        algorithms=FRONTIER_ALGORITHMS, engine="inprocess", frontier_report=True,
    ),
}


def peak_tree_rss(proc: subprocess.Popen, stop: threading.Event, out: list[int]) -> None:
    """Poll the summed RSS of ``proc`` and all its descendants; keep the maximum."""
    try:
        root = psutil.Process(proc.pid)
    except psutil.NoSuchProcess:
        return
    peak = 0
    while not stop.is_set():
        total = 0
        try:
            for p in [root, *root.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
        except psutil.Error:
            break
        peak = max(peak, total)
        stop.wait(0.25)
    out.append(peak)


def command(suite: Suite, method: str, seed: int, out: Path) -> list[str]:
    """The command line of one (method, seed): ``fedtune simulate`` (Ray) or the same on the
    in-process grid."""
    overrides = " ".join(x for x in (suite.common, suite.methods[method], f"seed={seed}") if x)
    algorithm = suite.algorithms.get(method, method)
    entry = {"ray": ["fedtune.cli", "simulate"],
             "inprocess": ["simulations.inprocess_simulate"]}[suite.engine]
    cmd = [sys.executable, "-m", *entry, "--algorithm", algorithm,
           "--num-clients", str(suite.num_clients), "--output-dir", str(out / "runs"),
           "--name", f"{method}-seed{seed}", "--run-config", overrides]
    return cmd + (["--recipe", suite.recipe] if suite.recipe else [])


def run_one(suite: Suite, method: str, seed: int, out: Path) -> dict[str, Any]:
    """Run one method with one seed; return its rows plus wall time and peak memory."""
    name = f"{method}-seed{seed}"
    cmd = command(suite, method, seed, out)
    log = out / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
        stop, peak = threading.Event(), []
        sampler = threading.Thread(target=peak_tree_rss, args=(proc, stop, peak))
        sampler.start()
        rc = proc.wait()
        stop.set()
        sampler.join()
    wall = time.perf_counter() - start
    if rc != 0:
        raise RuntimeError(f"{method} (seed {seed}) failed with exit code {rc}; see {log}")
    (run_dir,) = sorted((out / "runs").glob(f"{name}-*"))[-1:]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((run_dir / "summary.json").read_text())
    norms = run_dir / "update-norms.jsonl"  # in-process dp=off runs: the contributions' norms
    return {"method": method, "seed": seed, "rows": rows, "wall": wall,
            "peak_mib": (peak[0] if peak else 0) / 2**20,
            "total_bytes": summary["total_bytes_per_client"], "run_dir": str(run_dir),
            "norms": [{k: v for k, v in json.loads(line).items() if k != "norms"}
                      for line in norms.read_text().splitlines()] if norms.exists() else []}


def _stat(values: list[float], fmt: str) -> str:
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(statistics.mean(values), fmt)} ± {format(statistics.stdev(values), fmt)}"


def _round_bytes(rows: list[dict[str, Any]]) -> float:
    trained = [r for r in rows[1:] if r.get("clients")]
    if not trained:
        return 0.0
    return statistics.mean((r.get("bytes_down_per_client") or 0) + (r.get("bytes_up_per_client")
                                                                      or 0) for r in trained)


def table(suite_name: str, suite: Suite, results: list[dict[str, Any]], seeds: list[int]) -> str:
    metric = suite.metric
    versions = ", ".join(f"{p} {importlib.metadata.version(p)}"
                         for p in ("fedtune", "flwr", "torch", "transformers", "peft"))
    lines = [f"### Suite `{suite_name}`: {suite.description}", "",
             f"Seeds {seeds}; {versions}. Metric: `{metric}` on the held-out set; bytes are "
             "measured on the messages (down + up, per participating client per round).", "",
             f"| method | final {metric} | best {metric} | final held-out loss | "
             "bytes/client/round | total bytes/client | wall s | peak MiB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for method in suite.methods:
        runs = [r for r in results if r["method"] == method]
        if not runs:
            continue
        final = [r["rows"][-1].get(metric) or 0.0 for r in runs]
        best = [max((row.get(metric) or 0.0) for row in r["rows"]) for r in runs]
        loss = [r["rows"][-1]["eval_loss"] for r in runs]
        lines.append(
            f"| {method} | {_stat(final, '.3f')} | {_stat(best, '.3f')} | {_stat(loss, '.3f')} | "
            f"{_stat([_round_bytes(r['rows']) for r in runs], ',.0f')} | "
            f"{_stat([float(r['total_bytes']) for r in runs], ',.0f')} | "
            f"{_stat([r['wall'] for r in runs], '.0f')} | "
            f"{_stat([r['peak_mib'] for r in runs], '.0f')} |")
    return "\n".join(lines) + "\n"


def plot(suite: Suite, results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(11, 4))
    for method in suite.methods:
        runs = [r for r in results if r["method"] == method]
        if not runs:
            continue
        rounds = [row["round"] for row in runs[0]["rows"]]
        for ax, key in ((ax_loss, "eval_loss"), (ax_metric, suite.metric)):
            mean = [statistics.mean((r["rows"][i].get(key) or 0.0) for r in runs)
                    for i in range(len(rounds))]
            ax.plot(rounds, mean, "o-", label=method)
    ax_loss.set_ylabel("held-out loss")
    ax_metric.set_ylabel(f"held-out {suite.metric}")
    for ax in (ax_loss, ax_metric):
        ax.set_xlabel("round")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(suite.description, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def chain(name: str) -> list[str]:
    """The suites ``--suite name`` runs: itself, then its ``then`` suites (and theirs)."""
    out = [name]
    for follow in SUITES[name].then:
        out += [s for s in chain(follow) if s not in out]
    return out


def run_suite(name: str, methods: list[str], seeds: list[int], out: Path, jobs: int = 1
              ) -> None:
    """Every (seed, method) of one suite into ``out``, ``jobs`` runs at a time; then its
    tables and plots."""
    suite = SUITES[name]
    out.mkdir(parents=True, exist_ok=True)

    def one(seed: int, method: str) -> dict[str, Any]:
        done = out / "done" / f"{method}-seed{seed}.json"  # frontier: a rerun reuses a run
        if suite.frontier_report and done.exists():
            return json.loads(done.read_text())
        print(f"[{name}] {method} seed {seed} ...", flush=True)
        res = run_one(suite, method, seed, out)
        if suite.frontier_report:
            done.parent.mkdir(exist_ok=True)
            done.write_text(json.dumps(res))
        last = res["rows"][-1]
        print(f"    [{name}] {method} seed {seed}: {suite.metric} "
              f"{last.get(suite.metric) or 0:.3f}, held-out loss {last['eval_loss']:.3f}, "
              f"{res['wall']:.0f} s, {res['peak_mib']:.0f} MiB", flush=True)
        return res

    if suite.frontier_report:  # methods this tree's config refuses are left out, said so
        from simulations import frontier_report

        methods = frontier_report.runnable(suite, methods)
    todo = [(seed, method) for seed in seeds for method in methods]
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=jobs) as pool:  # each run is its own process
        results = list(pool.map(lambda job: one(*job), todo))
    print(f"[{name}] {len(todo)} runs in {time.perf_counter() - start:.0f} s, {jobs} at a time",
          flush=True)
    md = table(name, suite, results, seeds)
    (out / "results.md").write_text(md)
    (out / "results.json").write_text(json.dumps(
        [{k: v for k, v in r.items()} for r in results], indent=1))
    plot(suite, results, out / "results.png")
    print(md)
    print(f"wrote {out / 'results.md'} and {out / 'results.png'}")
    if suite.privacy:
        from simulations import privacy_report

        print(privacy_report.write(results, seeds, out, suite.description))
        print(f"wrote {out / 'privacy.md'} and {out / 'privacy.png'}")
    if suite.population_report:
        from simulations import privacy_report

        print(privacy_report.write_population(results, seeds, out, suite.description))
        print(f"wrote {out / 'population.md'} and {out / 'population.png'}")
    if suite.lora_report:
        from simulations import lora_report

        print(lora_report.write(results, seeds, out, suite.description, suite.metric))
        print(f"wrote {out / 'lora.md'} and {out / 'lora.png'}")
    if suite.frontier_report:
        print(frontier_report.write(suite, results, seeds, out))
        print(f"wrote {out / 'frontier.md'} and {out / 'frontier.png'}")
    if suite.full_report:
        from simulations import fullparam_report

        print(fullparam_report.write(results, out, suite.description, suite.metric))
        print(f"wrote {out / 'full-parameter.md'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=sorted(SUITES), default="smoke")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--methods", nargs="+", help="a subset of the suite's methods")
    parser.add_argument("--out", type=Path, help="output folder (default benchmarks/<suite>; "
                        "a suite that runs others: one subfolder per suite)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs at a time (each is its own process; default 1)")
    args = parser.parse_args(argv)
    names = chain(args.suite)
    known = [m for n in names for m in SUITES[n].methods]
    unknown = set(args.methods or []) - set(known)
    if unknown:
        parser.error(f"suite '{args.suite}' has no method(s) {sorted(unknown)}")
    for name in names:
        methods = [m for m in SUITES[name].methods if not args.methods or m in args.methods]
        if not methods:
            continue
        if args.out is None:
            out = Path("benchmarks") / name
        else:
            out = args.out / name if len(names) > 1 else args.out
        run_suite(name, methods, args.seeds, out, args.jobs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
