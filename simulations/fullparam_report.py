"""The full-parameter report of ``python -m simulations.benchmark --suite full-parameter``.

From the runs of one suite (FedKSeed, FedKSeed-Pro, Ferret, FedIT) it writes
``full-parameter.md``: per method, the final held-out loss, the first round whose held-out loss
is at or below FedKSeed's final one ("rounds to FedKSeed's final loss"), the clients' total
compute time (the sum over rounds of the mean local-round time ``seconds_train`` x the clients
that trained), the bytes per client per round each way, and the peak memory of the run's
process tree. Means over seeds; everything is read from the runs' metrics rows. Where the runs
report a task metric (Natural Instructions: ``rouge_l``), the table gives its final value and a
second table its value per held-out task with the task's count of evaluated examples; a third
line per method lists the held-out loss of every evaluated round.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from simulations.benchmark import _stat

REFERENCE = "fedkseed"


def _losses(rows: list[dict[str, Any]]) -> list[tuple[int, float]]:
    return [(r["round"], float(r["eval_loss"])) for r in rows if r.get("eval_loss") is not None]


def rounds_to(rows: list[dict[str, Any]], target: float) -> int | None:
    """The first round (>= 1) whose held-out loss is <= ``target``; None if none is."""
    return next((rnd for rnd, loss in _losses(rows) if rnd >= 1 and loss <= target), None)


def compute_seconds(rows: list[dict[str, Any]]) -> float:
    """The clients' summed local-round time over the run."""
    return sum(float(r.get("seconds_train") or 0.0) * int(r.get("clients") or 0) for r in rows)


def _mean(rows_list: list[list[dict[str, Any]]], key: str) -> float:
    values = [statistics.fmean(float(r[key]) for r in rows[1:] if r.get(key) is not None)
              for rows in rows_list]
    return statistics.fmean(values)


def _final(runs: list[dict[str, Any]], key: str) -> float | None:
    """The mean over seeds of the last evaluated value of ``key``; None if no run has one."""
    last = [next((float(r[key]) for r in reversed(run["rows"]) if r.get(key) is not None), None)
            for run in runs]
    last = [x for x in last if x is not None]
    return statistics.fmean(last) if last else None


def per_task(by_method: dict[str, list[dict[str, Any]]], metric: str) -> list[str]:
    """Markdown rows: per held-out task, its evaluated-example count and each method's final
    ``metric`` (keys ``<metric>/<task>`` and ``evaluated/<task>``)."""
    tasks = sorted({k.split("/", 1)[1] for runs in by_method.values() for run in runs
                    for row in run["rows"] for k in row if k.startswith(f"{metric}/")})
    if not tasks:
        return []
    methods = list(by_method)
    lines = [f"| task | examples | {' | '.join(methods)} |",
             "|---|---:|" + "---:|" * len(methods)]
    for task in tasks:
        count = next((int(row[f"evaluated/{task}"]) for runs in by_method.values()
                      for run in runs for row in run["rows"] if f"evaluated/{task}" in row), 0)
        cells = [_final(by_method[m], f"{metric}/{task}") for m in methods]
        lines.append(f"| {task} | {count} | "
                     + " | ".join("—" if c is None else f"{c:.3f}" for c in cells) + " |")
    return lines


def write(results: list[dict[str, Any]], out: Path, description: str,
          metric: str = "rouge_l") -> str:
    """Write ``full-parameter.md`` under ``out``; returns its text."""
    by_method: dict[str, list[dict[str, Any]]] = {}
    for res in results:
        by_method.setdefault(res["method"], []).append(res)
    ref = by_method.get(REFERENCE)
    target = (statistics.fmean(_losses(r["rows"])[-1][1] for r in ref) if ref else None)
    lines = [f"# Full-parameter tuning: {description}", "",
             f"Target: {REFERENCE}'s final held-out loss"
             + (f" ({target:.3f})." if target is not None else " (not run)."), "",
             f"| method | final held-out loss | final {metric} | rounds to target "
             "| client compute s (total) | KB down/client/round | KB up/client/round | peak MiB |",
             "|---|---|---|---|---|---|---|---|"]
    for method, runs in by_method.items():
        score = _final(runs, metric)
        reached = [rounds_to(r["rows"], target) for r in runs] if target is not None else []
        shown = ", ".join("—" if x is None else str(x) for x in reached) or "—"
        lines.append(
            f"| {method} | {_stat([_losses(r['rows'])[-1][1] for r in runs], '.3f')} "
            f"| {'—' if score is None else format(score, '.3f')} | {shown} "
            f"| {_stat([compute_seconds(r['rows']) for r in runs], '.0f')} "
            f"| {_mean([r['rows'] for r in runs], 'bytes_down_per_client') / 1e3:.1f} "
            f"| {_mean([r['rows'] for r in runs], 'bytes_up_per_client') / 1e3:.1f} "
            f"| {_stat([r['peak_mib'] for r in runs], '.0f')} |")
    lines += ["", "Rounds to target: per seed, the first round whose held-out loss is at or "
              "below the target (— never). Client compute: the sum over rounds of the mean "
              "local round (catch-up, local steps, projection) x the clients that trained."]
    lines += ["", "Held-out loss by round (the evaluated rounds, seed of the first run):", ""]
    lines += [f"- {method}: " + ", ".join(f"{rnd}: {loss:.3f}" for rnd, loss
                                          in _losses(runs[0]["rows"]))
              for method, runs in by_method.items()]
    tasks = per_task(by_method, metric)
    if tasks:
        lines += ["", f"Final {metric} per held-out task (examples: evaluated per task):", "",
                  *tasks]
    text = "\n".join(lines) + "\n"
    (Path(out) / "full-parameter.md").write_text(text)
    return text
