"""The frontier report of ``python -m simulations.benchmark --suite frontier``.

From the suite's runs (every method of :mod:`simulations.frontier_methods`, same data and
rounds) and one client-round probe per method (:mod:`simulations.client_round`, a fresh process
each: one local round on stories260k with the suite's settings, and one on a Llama of 134M
parameters with fewer steps) it writes ``frontier.md``, one table (mean ± std over seeds), and
``frontier.png``: the final held-out loss against the bytes per client per round (log x), one
labelled point per method, a marker per family, and beside it the same loss against the client's
peak memory on the 134M Llama. The probes are kept in ``probes.json`` (a rerun reuses them).
"""

from __future__ import annotations

import functools
import json
import statistics
import textwrap
from pathlib import Path
from typing import Any

from simulations.benchmark import Suite, _round_bytes, _stat
from simulations.frontier_methods import BY_NAME, FAMILIES, STORIES260K

PROBES = "probes.json"
MODELS = ("stories260k", "llama134m")


def _flat(suite: Suite, method: str) -> str:
    return " ".join(x for x in (suite.common, suite.methods[method]) if x)


def runnable(suite: Suite, methods: list[str]) -> list[str]:
    """The methods whose config this tree accepts; each one left out is said on stdout (a key
    not yet in the tree, a combination the compatibility table refuses)."""
    from fedtune.algorithms import resolve
    from fedtune.config import Config, parse_overrides
    from fedtune.errors import ConfigError

    kept = []
    for method in methods:
        flat = {**parse_overrides(_flat(suite, method)),
                "algorithm": suite.algorithms.get(method, method)}
        try:
            resolve(Config.from_flat(flat))
        except ConfigError as err:
            print(f"[frontier] {method} left out: {err}", flush=True)
            continue
        kept.append(method)
    return kept


def probe_overrides(suite: Suite, method: str, model: str) -> str:
    """A probe's overrides: the suite's (the model aside), on the 134M Llama with the
    method's ``probe_134m`` (fewer steps)."""
    words = [w for w in _flat(suite, method).split() if not w.startswith("model=")]
    if model == "llama134m":
        words.append(BY_NAME[method].probe_134m)
    return " ".join(words)


def run_probes(suite: Suite, methods: list[str], out: Path, models: tuple[str, ...] = MODELS
               ) -> dict[str, dict[str, Any]]:
    """``{"<method>/<model>": probe}`` for every method on each model; reuses ``probes.json``
    entries whose overrides are unchanged, writes it after each probe."""
    from simulations.client_round import probe

    path = out / PROBES
    done: dict[str, dict[str, Any]] = json.loads(path.read_text()) if path.exists() else {}
    for model in models:
        for method in methods:
            key, overrides = f"{method}/{model}", probe_overrides(suite, method, model)
            if done.get(key, {}).get("overrides") == overrides and "cpu_seconds" in done[key]:
                continue
            print(f"[frontier] client round: {method} on {model} ...", flush=True)
            try:
                done[key] = probe(suite.algorithms.get(method, method), overrides,
                                  None if model == "stories260k" else model)
            except RuntimeError as err:  # one probe failing leaves its cells empty
                print(f"[frontier] {err}", flush=True)
                continue
            # merged with what another process (a probe run of its own) wrote meanwhile
            saved = json.loads(path.read_text()) if path.exists() else {}
            done = {**saved, **{k: v for k, v in done.items() if k not in saved}, key: done[key]}
            path.write_text(json.dumps(done, indent=1))
    return done


def _first_lr(rows: list[dict[str, Any]]) -> float | None:
    return next((float(r["lr"]) for r in rows[1:] if r.get("lr") is not None), None)


@functools.lru_cache(maxsize=4)
def auto_zo_lr(model: str) -> float:
    """FedKSeed's ZO step size when ``zo-lr`` is 0 (its rows carry no ``lr``), as its client
    computes it from the model's ZO-tuned parameter count."""
    from fedtune.algorithms.fedkseed.config import ZOConfig
    from fedtune.algorithms.fedkseed.defaults import zo_lr
    from fedtune.models.loading import choose_placement, is_tiny, load_model
    from fedtune.seeded.params import zo_named_parameters

    net = load_model(model, choose_placement("cpu", "float32"))
    n = sum(p.numel() for _, p in zo_named_parameters(net))
    return zo_lr(ZOConfig(), n, is_tiny(model))


def _lr(suite: Suite, name: str, runs: list[dict[str, Any]]) -> str:
    """Round 1's lr from the rows; FedKSeed's auto ZO step size (marked) where they have none."""
    lrs = [x for x in (_first_lr(r["rows"]) for r in runs) if x is not None]
    if lrs:
        return format(lrs[0], ".3g")
    if suite.algorithms.get(name, name).startswith("fedkseed") and "zo-lr=" not in \
            suite.methods[name]:
        return f"{auto_zo_lr(str(STORIES260K)):.2g} (zo)"
    return "—"


def _probe_cell(probes: dict[str, dict[str, Any]], key: str, field: str, fmt: str) -> str:
    value = probes.get(key, {}).get(field)
    return "—" if value is None else format(value, fmt)


def table(suite: Suite, results: list[dict[str, Any]], seeds: list[int],
          probes: dict[str, dict[str, Any]]) -> str:
    """One line per method, in suite order."""
    lines = [f"### Frontier: {suite.description}", "",
             f"Mean ± std over seeds {seeds}. Held-out loss: the server's held-out set after "
             "the last round (round 0, before training: "
             f"{_round0(results)}). Bytes: measured messages, down + up per participating "
             "client per round. lr: the learning rate of round 1 as the run's rows report it "
             "(FedKSeed: its ZO step size; Ferret: its local SGD lr). Client round: one local "
             "round of one client (round 1, partition 0) in a fresh process "
             "(`simulations.client_round`), one torch thread; CPU s: the process's CPU time "
             "over the round (model load, local steps, and for FedKSeed/Ferret the catch-up "
             "and projection); peak MiB: the process's peak RSS (Python, torch, the model, the "
             "round). On the 134M Llama (random weights) the round is 1 local step (FedKSeed: 2 "
             "ZO steps).", "",
             "| method | family | lr | final held-out loss | bytes/client/round | "
             "client CPU s/round | client peak MiB | 134M: peak MiB | 134M: CPU s |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name in suite.methods:
        runs = [r for r in results if r["method"] == name]
        if not runs:
            continue
        method = BY_NAME[name]
        lines.append(
            f"| {name} | {method.family} | {_lr(suite, name, runs)} | "
            f"{_stat([float(r['rows'][-1]['eval_loss']) for r in runs], '.3f')} | "
            f"{_stat([_round_bytes(r['rows']) for r in runs], ',.0f')} | "
            f"{_probe_cell(probes, f'{name}/stories260k', 'cpu_seconds', '.2f')} | "
            f"{_probe_cell(probes, f'{name}/stories260k', 'peak_mib', ',.0f')} | "
            f"{_probe_cell(probes, f'{name}/llama134m', 'peak_mib', ',.0f')} | "
            f"{_probe_cell(probes, f'{name}/llama134m', 'cpu_seconds', '.1f')} |")
    return "\n".join(lines) + "\n"


def _round0(results: list[dict[str, Any]]) -> str:
    losses = [float(r["rows"][0]["eval_loss"]) for r in results
              if r["rows"] and r["rows"][0].get("eval_loss") is not None]
    return _stat(losses, ".2f") if losses else "—"


def points(suite: Suite, results: list[dict[str, Any]], probes: dict[str, dict[str, Any]]
           ) -> list[dict[str, Any]]:
    """Per method: family, mean bytes per round, mean and std of the final held-out loss, and
    the 134M client's peak MiB (None without a probe)."""
    out = []
    for name in suite.methods:
        runs = [r for r in results if r["method"] == name]
        if not runs:
            continue
        losses = [float(r["rows"][-1]["eval_loss"]) for r in runs]
        out.append({"method": name, "family": BY_NAME[name].family,
                    "bytes": statistics.fmean(_round_bytes(r["rows"]) for r in runs),
                    "loss": statistics.fmean(losses),
                    "std": statistics.stdev(losses) if len(losses) > 1 else 0.0,
                    "peak_134m": probes.get(f"{name}/llama134m", {}).get("peak_mib")})
    return out


#: What a point's label adds: FedSA-LoRA's server keeps A only (each client its own B), so the
#: server's held-out loss is the base model's; its personalised loss is in docs/bench-lora.md.
NOTES = {"fedsa": "fedsa (server's model: B = 0)"}


def _groups(pts: list[dict[str, Any]], xkey: str, xtol: float, ytol: float
            ) -> list[list[dict[str, Any]]]:
    """Points that sit on top of each other (log10 x within ``xtol``, loss within ``ytol``),
    grouped."""
    import math

    groups: list[list[dict[str, Any]]] = []
    for p in sorted(pts, key=lambda p: (p[xkey], p["loss"])):
        for g in groups:
            if (abs(math.log10(g[0][xkey]) - math.log10(p[xkey])) < xtol
                    and abs(g[0]["loss"] - p["loss"]) < ytol):
                g.append(p)
                break
        else:
            groups.append([p])
    return groups


def _label(ax, pts: list[dict[str, Any]], xkey: str, xtol: float = 0.05,
           ytol: float = 0.06) -> None:
    """Each point's name beside it; one label (two names a line) for points on top of each
    other; labels of groups close on the axes alternate above and below."""
    import math

    placed: list[tuple[float, float]] = []
    for group in _groups(pts, xkey, xtol, ytol):
        names = [NOTES.get(p["method"], p["method"]) for p in group]
        text = "\n".join(", ".join(names[i:i + 2]) for i in range(0, len(names), 2))
        x, y = group[0][xkey], statistics.fmean(p["loss"] for p in group)
        near = sum(1 for px, py in placed
                   if abs(px - math.log10(x)) < 6 * xtol and abs(py - y) < 0.5)
        placed.append((math.log10(x), y))
        dy = -9 if near % 2 else 8
        ax.annotate(text, (x, y), xytext=(-4 if near % 2 else 5, dy),
                    textcoords="offset points", fontsize=7.5,
                    va="top" if near % 2 else "bottom", ha="left")


def _si(unit: str):
    """A tick formatter: 10 KB, 1.5 MB (unit B), or 1,200 (MiB)."""
    from matplotlib.ticker import FuncFormatter

    def fmt(v: float, _pos) -> str:
        if unit != "B":
            return f"{v:,.0f}"
        for div, name in ((1e6, "MB"), (1e3, "KB")):
            if v >= div:
                return f"{v / div:g} {name}"
        return f"{v:g} B"

    return FuncFormatter(fmt)


def plot(suite: Suite, results: list[dict[str, Any]], probes: dict[str, dict[str, Any]],
         path: Path) -> None:
    """Final held-out loss against bytes per client per round (log x), and against the 134M
    client's peak memory; one marker per family, each point labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    pts = points(suite, results, probes)
    fig, (ax_bytes, ax_mem) = plt.subplots(1, 2, figsize=(15, 6.5),
                                           gridspec_kw={"width_ratios": [3, 2]})
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (family, marker) in enumerate(FAMILIES.items()):
        mine = [p for p in pts if p["family"] == family]
        if not mine:
            continue
        style = {"marker": marker, "color": colors[i % len(colors)], "ls": "none", "ms": 7,
                 "capsize": 2, "label": family}
        ax_bytes.errorbar([p["bytes"] for p in mine], [p["loss"] for p in mine],
                          yerr=[p["std"] for p in mine], **style)
        mem = [p for p in mine if p["peak_134m"]]
        if mem:
            ax_mem.errorbar([p["peak_134m"] for p in mem], [p["loss"] for p in mem],
                            yerr=[p["std"] for p in mem], **style)
    _label(ax_bytes, pts, "bytes")
    probed = [p for p in pts if p["peak_134m"]]
    # a point far beyond the rest (HRA's dense reflections) would squeeze every other point
    # into a corner: it is named at the panel's right edge, its figure in the label
    cap = 2.5 * statistics.median(p["peak_134m"] for p in probed) if probed else 0.0
    far = [p for p in probed if p["peak_134m"] > cap]
    _label(ax_mem, [p for p in probed if p not in far], "peak_134m", 0.012, 0.3)
    start = [float(r["rows"][0]["eval_loss"]) for r in results
             if r["rows"] and r["rows"][0].get("eval_loss") is not None]
    for ax, unit in ((ax_bytes, "B"), (ax_mem, "MiB")):
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(_si(unit))
        ax.xaxis.set_minor_formatter(NullFormatter() if unit == "B" else _si(unit))
        ax.margins(x=0.12, y=0.08)
        ax.set_ylabel("final held-out loss (mean ± std over seeds)")
        ax.grid(alpha=0.3, which="both")
        if start:
            ax.axhline(statistics.fmean(start), color="0.4", ls=":", lw=1.2)
            ax.annotate(f"round 0 (untrained): {statistics.fmean(start):.2f}",
                        (0.01, statistics.fmean(start)), xycoords=("axes fraction", "data"),
                        xytext=(0, -10), textcoords="offset points", fontsize=7.5,
                        color="0.3")
    ax_mem.tick_params(axis="x", which="minor", labelsize=7)
    if far:
        near = [p["peak_134m"] for p in probed if p not in far]
        ax_mem.set_xlim(min(near) / 1.15, max(near) * 1.3)
        for p in far:
            ax_mem.annotate(f"{p['method']}: {p['peak_134m']:,.0f} MiB \u2192", (1.0, p["loss"]),
                            xycoords=("axes fraction", "data"), xytext=(-4, 0),
                            textcoords="offset points", ha="right", va="center", fontsize=8)
    ax_bytes.set_xlabel("bytes per participating client per round (down + up), log scale")
    ax_mem.set_xlabel("client peak RSS (MiB) of one local round on a 134M Llama, log scale")
    ax_bytes.set_title("loss against communication", fontsize=10)
    ax_mem.set_title("loss against client memory (methods probed at 134M)", fontsize=10)
    handles, labels = ax_bytes.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=9,
               frameon=False)
    fig.suptitle(textwrap.fill(f"Frontier: {suite.description}", 140), fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(suite: Suite, results: list[dict[str, Any]], seeds: list[int], out: Path,
          probes: dict[str, dict[str, Any]] | None = None) -> str:
    """``frontier.md`` and ``frontier.png`` in ``out`` (the probes run first unless given);
    returns the Markdown."""
    methods = list(dict.fromkeys(r["method"] for r in results))
    if probes is None:
        probes = run_probes(suite, methods, out)
    md = table(suite, results, seeds, probes)
    (out / "frontier.md").write_text(md)
    plot(suite, results, probes, out / "frontier.png")
    return md


def main(argv: list[str] | None = None) -> int:
    """The client-round probes alone (``--suite frontier`` runs them after its runs)."""
    import argparse

    from simulations.benchmark import SUITES

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--out", type=Path, default=Path("benchmarks") / "frontier")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--methods", nargs="+", help="a subset of the suite's methods")
    args = parser.parse_args(argv)
    suite = SUITES["frontier"]
    methods = runnable(suite, [m for m in suite.methods
                               if not args.methods or m in args.methods])
    args.out.mkdir(parents=True, exist_ok=True)
    probes = run_probes(suite, methods, args.out, tuple(args.models))
    print(json.dumps(probes, indent=1))
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
