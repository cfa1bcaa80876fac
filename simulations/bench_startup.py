"""Start-up cost of the default run, measured in one run (issue #27 item 4).

    python -m simulations.bench_startup                  # `fedtune simulate`, no arguments
    python -m simulations.bench_startup --tree /tmp/old  # the same for another source tree
    python -m simulations.bench_startup --json out.json --metrics rows.json
    python -m simulations.bench_startup --repeat 5       # five runs: the median and range

It runs the default ``fedtune simulate`` (built-in defaults, Ray engine) in a fresh process in
an empty folder and prints the wall time over 13 x its median steady round (rounds 2-12:
``seconds`` in ``metrics.jsonl``), then the parts of the start-up, timed from inside that same
run by wrappers that only record a clock (``ray.init``, the actor pool, each message a Ray
actor handles) and from the time each progress line is printed:

- process start and imports: until ``fedtune.cli`` is imported;
- checks: the CLI's config, data and tokenizer checks, until the simulation engine starts;
- Ray start: ``ray.init``; actor start: the first message each actor handles (a fresh actor's
  process start and the ClientApp's imports: the server's ``identify`` query);
- first message: the first train message an actor handles, less the median later one
  (torch, transformers, model, tokenizer and data built in a fresh actor);
- the excess over 13 medians, by stretch: before round 0 starts, round 0 and round 1 over the
  median, the later rounds' spread, and after the last round, itself split into the server's
  finish (summary, plot, table), Flower's engine stop (until it calls the backend's
  ``terminate``: its threads' 1 s queue polls), Ray's shutdown and the process's exit.

The machine's load average is printed with the result: these machines are shared, and a ratio
measured under load is still a ratio, not a wall time to compare across machines. On a quiet
2-core machine two runs minutes apart differ by up to 0.1 in ratio (the median round moves),
so ``--repeat N`` runs N times one after the other and prints each ratio, then the median
run's parts; with ``--metrics`` it also checks that every run wrote the same rows.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
EVENTS_ENV = "FEDTUNE_BENCH_EVENTS"
TIMING = ("seconds",)  # a metrics key holding one of these is a timing, not a result


# ---- the child: the default run, with clocks around a few engine calls ------------------------

def _record(name: str, **extra: Any) -> None:
    with open(os.environ[EVENTS_ENV], "a") as fh:  # one line per event, written at once
        fh.write(json.dumps({"event": name, "t": time.time(), "pid": os.getpid(), **extra})
                 + "\n")


def _patch_ray(ray: Any) -> None:
    init = ray.init

    def timed_init(*args: Any, **kwargs: Any) -> Any:
        _record("ray-init-start")
        try:
            return init(*args, **kwargs)
        finally:
            _record("ray-init-end")

    ray.init = timed_init


def _patch_backend(mod: Any) -> None:
    backend = mod.RayBackend
    build, process = backend.build, backend.process_message

    def timed_build(self: Any, app_fn: Any) -> None:
        _record("pool-start")
        build(self, app_fn)
        _record("pool-end", actors=self.num_workers)

    def timed_process(self: Any, message: Any, context: Any) -> Any:
        start = time.time()
        try:
            return process(self, message, context)
        finally:
            _record("message", start=start, type=message.metadata.message_type,
                    partition=int(context.node_config.get("partition-id", -1)))

    def timed_terminate(self: Any) -> None:
        _record("terminate-start")
        try:
            terminate(self)
        finally:
            _record("terminate-end")

    terminate = backend.terminate
    own = vars(backend)  # a subclass's overrides only (fedtune's backend): each clock once
    for name, timed in (("build", timed_build), ("process_message", timed_process),
                        ("terminate", timed_terminate)):
        if name in own:
            setattr(backend, name, timed)


def _patch_simulation(mod: Any) -> None:
    run = mod._run_simulation

    def timed_run(*args: Any, **kwargs: Any) -> Any:
        _record("engine-start")
        return run(*args, **kwargs)

    mod._run_simulation = timed_run


PATCHES = {"ray": _patch_ray, "flwr.server.superlink.fleet.vce.backend.raybackend":
           _patch_backend, "fedtune.flower.ray_backend": _patch_backend,
           "flwr.simulation.run_simulation": _patch_simulation}


class _AfterImport:
    """A meta-path finder that patches the modules in :data:`PATCHES` once they are imported,
    whoever imports them and whenever: the run's own import order stays as it is."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name not in PATCHES:
            return None
        import importlib.machinery

        for finder in sys.meta_path:
            if finder is self:
                continue
            spec = finder.find_spec(name, path, target) if hasattr(finder, "find_spec") \
                else None
            if spec is not None and spec.loader is not None:
                loader, patch = spec.loader, PATCHES[name]
                run = loader.exec_module

                def exec_module(module: Any, run: Any = run, patch: Any = patch) -> None:
                    run(module)
                    patch(module)

                loader.exec_module = exec_module  # type: ignore[method-assign]
                assert isinstance(spec, importlib.machinery.ModuleSpec)
                return spec
        return None


def child(argv: list[str]) -> int:
    """The default run in this process (``fedtune simulate`` and ``argv``), with the clocks."""
    _record("python")
    sys.meta_path.insert(0, _AfterImport())
    from fedtune import cli

    _record("imports")
    sys.argv = ["fedtune", "simulate", *argv]
    if hasattr(cli, "entry"):  # the console script's way out (a tree before it: main's)
        cli.entry()
    return cli.main()


# ---- the parent: run it, time its output, put the parts together ------------------------------

def run(tree: Path, argv: list[str], workdir: Path) -> dict[str, Any]:
    """One default run of ``tree`` in ``workdir``; its events, lines, rows and wall time."""
    events = workdir / "events.jsonl"
    env = {**os.environ, EVENTS_ENV: str(events), "PYTHONPATH": os.pathsep.join(
        [str(tree), *filter(None, [os.environ.get("PYTHONPATH")])])}
    lines: list[tuple[float, str]] = []
    spawn = time.time()
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--child", *argv],
                            cwd=workdir, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append((time.time(), line.rstrip("\n")))
    code = proc.wait()
    end = time.time()
    if code != 0:
        raise SystemExit(f"fedtune simulate exited {code}:\n"
                         + "\n".join(text for _, text in lines[-40:]))
    (metrics,) = workdir.glob("runs/*/metrics.jsonl")
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    return {"spawn": spawn, "end": end, "lines": lines, "rows": rows,
            "events": [json.loads(line) for line in events.read_text().splitlines()]}


def _round_ends(lines: list[tuple[float, str]]) -> dict[int, float]:
    """round -> when its progress line was printed."""
    ends = {}
    for t, text in lines:
        if text.startswith("round ") and "/" in text:
            ends[int(text.split()[1].split("/")[0])] = t
    return ends


def parts(got: dict[str, Any]) -> dict[str, Any]:
    """The ratio and its parts (seconds) from one run's record."""
    spawn, rows, ev = got["spawn"], got["rows"], got["events"]
    first = {e["event"]: e["t"] for e in reversed(ev)}  # the first of each kind
    wall = got["end"] - spawn
    secs = {r["round"]: r["seconds"] for r in rows}
    last = max(secs)
    median = statistics.median(secs[r] for r in range(2, last + 1))
    ends = _round_ends(got["lines"])
    r0_start = ends[0] - secs[0]
    msgs = sorted((e for e in ev if e["event"] == "message"), key=lambda e: e["start"])
    by_actor: dict[int, list[dict[str, Any]]] = {}  # Ray runs one message per actor at once:
    for m in msgs:  # the n-th identify overlaps no other; group by start order within type
        by_actor.setdefault(m["partition"], []).append(m)
    idents = [m for m in msgs if m["type"].endswith("identify")]
    trains = [m for m in msgs if m["type"] == "train"]
    actors = next((e.get("actors") for e in ev if e["event"] == "pool-end"), None) or 1
    first_trains = trains[:actors]
    later = statistics.median(m["t"] - m["start"] for m in trains[actors:]) if \
        len(trains) > actors else 0.0
    out = {
        "wall": wall, "median_round": median, "ratio": wall / (13 * median),
        "rounds": last, "actors": actors,
        "imports": first["imports"] - spawn,
        "python_start": first["python"] - spawn,
        "checks": first["engine-start"] - first["imports"],
        "engine_start_at": first["engine-start"] - spawn,
        "ray_start": first["ray-init-end"] - first["ray-init-start"],
        "ray_start_at": first["ray-init-start"] - spawn,
        "pool_ready_at": first["pool-end"] - spawn,
        "actor_start": max((m["t"] - m["start"] for m in idents[:actors]), default=0.0),
        "first_message": max((m["t"] - m["start"] for m in first_trains), default=0.0) - later,
        "train_message_median": later,
        "excess": wall - 13 * median,
        "excess_before_round0": r0_start - spawn,
        "excess_round0": secs[0] - median,
        "excess_round1": secs[1] - median,
        "excess_rounds_2_on": sum(secs[r] - median for r in range(2, last + 1)),
        "excess_after": got["end"] - ends[last],
    }
    plot = next((t for t, text in got["lines"] if text.startswith("plot: ")), None)
    if plot is not None and "terminate-end" in first:  # the stretch after the last round
        out |= {"after_finish": plot - ends[last],
                "after_engine_stop": first["terminate-start"] - plot,
                "after_ray_shutdown": first["terminate-end"] - first["terminate-start"],
                "after_exit": got["end"] - first["terminate-end"]}
    return out


def results(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows without their timings: what must stay bit-identical."""
    return [{k: v for k, v in r.items() if not any(t in k for t in TIMING)} for r in rows]


def report(p: dict[str, Any], load: tuple[float, float, float]) -> str:
    s = (f"default run: {p['wall']:.1f} s wall, median steady round {p['median_round']:.2f} s "
         f"(rounds 2-{p['rounds']}): ratio {p['ratio']:.2f} (goal <= 1.3)\n"
         f"  load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores; "
         f"{p['actors']} Ray actors\n"
         f"  process start and imports  {p['imports']:6.1f} s (python up at "
         f"{p['python_start']:.1f} s)\n"
         f"  checks before the engine   {p['checks']:6.1f} s (engine starts at "
         f"{p['engine_start_at']:.1f} s)\n"
         f"  Ray start                  {p['ray_start']:6.1f} s (from {p['ray_start_at']:.1f} s; "
         f"actor pool ready at {p['pool_ready_at']:.1f} s)\n"
         f"  actor start                {p['actor_start']:6.1f} s (a fresh actor's first "
         "message, identify)\n"
         f"  first message              {p['first_message']:6.1f} s (first train over the "
         f"median train message, {p['train_message_median']:.2f} s)\n"
         f"  excess over 13 medians     {p['excess']:6.1f} s = before round 0 "
         f"{p['excess_before_round0']:.1f} + round 0 {p['excess_round0']:+.1f} + round 1 "
         f"{p['excess_round1']:+.1f} + rounds 2-{p['rounds']} {p['excess_rounds_2_on']:+.1f} + "
         f"after the last round {p['excess_after']:.1f}")
    if "after_finish" in p:
        s += (f"\n  after the last round       {p['excess_after']:6.1f} s = the server's finish "
              f"{p['after_finish']:.1f} (summary, plot, table) + Flower's engine stop "
              f"{p['after_engine_stop']:.1f} + Ray's shutdown {p['after_ray_shutdown']:.1f} + "
              f"exit {p['after_exit']:.1f}")
    return s


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        return child(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tree", type=Path, default=ROOT, help="source tree to run (default: this)")
    ap.add_argument("--repeat", type=int, default=1, help="runs, one after the other (default 1)")
    ap.add_argument("--json", type=Path,
                    help="write the parts here (with --repeat: a list, one per run)")
    ap.add_argument("--metrics", type=Path, help="write the rows without timings here")
    ap.add_argument("--keep", action="store_true", help="keep the run folders")
    ap.add_argument("args", nargs="*", help="extra `fedtune simulate` arguments (after --)")
    args = ap.parse_args(argv)
    if args.repeat < 1:
        ap.error(f"--repeat={args.repeat} must be at least 1")
    runs, rows = [], []
    for i in range(args.repeat):
        workdir = Path(tempfile.mkdtemp(prefix="fedtune-startup-"))
        got = run(args.tree.resolve(), args.args, workdir)
        runs.append({**parts(got), "load": os.getloadavg(), "tree": str(args.tree)})
        rows.append(results(got["rows"]))
        if args.repeat > 1:
            print(f"run {i + 1}/{args.repeat}: ratio {runs[-1]['ratio']:.2f}, "
                  f"{runs[-1]['wall']:.1f} s wall, median round {runs[-1]['median_round']:.2f} s",
                  flush=True)
        if args.keep:
            print(f"run folder: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    middle = median_run(runs)
    print(report(middle, middle["load"]))
    if args.repeat > 1:
        ratios = sorted(r["ratio"] for r in runs)
        print(f"  {args.repeat} runs: ratio median {middle['ratio']:.2f} (the run above), "
              f"range {ratios[0]:.2f}-{ratios[-1]:.2f}")
    if args.json:
        args.json.write_text(json.dumps(runs if args.repeat > 1 else runs[0], indent=1))
    if args.metrics:
        if any(r != rows[0] for r in rows[1:]):
            print("the runs wrote different metrics: the default run is not deterministic",
                  file=sys.stderr)
            return 1
        args.metrics.write_text(json.dumps(rows[0], indent=0))
    return 0


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run whose ratio is the median (the lower middle one of an even number)."""
    return sorted(runs, key=lambda r: r["ratio"])[(len(runs) - 1) // 2]


if __name__ == "__main__":
    sys.exit(main())
