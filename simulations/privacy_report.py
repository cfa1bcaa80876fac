"""The privacy-utility report of ``python -m simulations.benchmark --suite privacy``.

From the runs of one suite it writes a Markdown table and a plot (``privacy.png``) of the final
held-out loss (mean ± std over seeds) against the final epsilon, one point per (algorithm, noise
multiplier z). Everything is read from the runs' metrics rows: a ``dp=off`` run has no ``dp_*``
keys; a DP run's rows carry ``dp_noise_multiplier`` (z), ``dp_clip_norm`` (C), ``dp_delta``,
``dp_clipped`` (the fraction of this round's updates over C: null since DP runs release nothing
per client, so the column shows figures of older runs only) and ``dp_epsilon`` (the cumulative
epsilon; ``None`` = unbounded, i.e. z = 0, clipped but noiseless).

For the 1,000-client part (suite ``privacy-1000``), :func:`write_population` writes
``population.md`` (per run: epsilon, delta, z, C, clients per round, rounds, held-out loss round 0
-> final, the share of the dp=off run's loss reduction kept, the dp=off run's update norms, wall
time) and ``population.png`` (held-out loss per round; the dp=off update norms against C).
"""

from __future__ import annotations

import math
import statistics
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Point:
    """One (algorithm, z) of the suite: its final held-out loss over seeds and its epsilon."""

    method: str
    algorithm: str
    z: float | None  # None: dp=off (no clipping, no noise, no accounting)
    clip: float | None
    delta: float | None
    epsilon: float | None  # math.inf: unbounded (z = 0); None: dp=off
    losses: list[float]  # the final held-out loss of each seed
    start: float  # the round-0 held-out loss (the untrained model), mean over seeds
    clipped: float | None  # mean fraction of clipped updates over trained rounds and seeds

    @property
    def mean(self) -> float:
        return statistics.mean(self.losses)

    @property
    def std(self) -> float:
        return statistics.stdev(self.losses) if len(self.losses) > 1 else 0.0


def points(results: list[dict[str, Any]]) -> list[Point]:
    """Group the runs by method (in order of appearance) into :class:`Point` s."""
    out: dict[str, Point] = {}
    for res in results:
        rows, last = res["rows"], res["rows"][-1]
        private = "dp_noise_multiplier" in last
        eps = None
        if private:
            eps = math.inf if last.get("dp_epsilon") is None else float(last["dp_epsilon"])
        fractions = [r["dp_clipped"] for r in rows if r.get("dp_clipped") is not None]
        p = out.setdefault(res["method"], Point(
            res["method"], last.get("algorithm", res["method"]),
            last["dp_noise_multiplier"] if private else None, last.get("dp_clip_norm"),
            last.get("dp_delta"), eps, [], 0.0, None))
        p.losses.append(float(last["eval_loss"]))
        p.start += (float(rows[0]["eval_loss"]) - p.start) / len(p.losses)  # running mean
        if fractions:
            f = statistics.mean(fractions)
            p.clipped = f if p.clipped is None else p.clipped + (f - p.clipped) / len(p.losses)
        if eps is not None and p.epsilon is not None:
            p.epsilon = max(p.epsilon, eps)  # equal over seeds unless a round was skipped
    return list(out.values())


def _eps(p: Point) -> str:
    if p.epsilon is None:
        return "—"
    return "∞" if math.isinf(p.epsilon) else f"{p.epsilon:.1f}"


def _loss(p: Point) -> str:
    return f"{p.mean:.3f}" if len(p.losses) == 1 else f"{p.mean:.3f} ± {p.std:.3f}"


def table(pts: list[Point], seeds: list[int]) -> str:
    """A Markdown table: final held-out loss (mean ± std over seeds) against final epsilon."""
    delta = next((p.delta for p in pts if p.delta), None)
    head = f"final ε (δ = {delta:.3g})" if delta else "final ε"
    lines = [f"Final held-out loss against final ε; mean ± std over seeds {seeds}. "
             "ε = ∞: z = 0, clipped but no noise; dp = off: neither clipped nor noised. "
             "Δ: final minus round-0 (untrained) loss, negative = the model learned.", "",
             f"| algorithm | dp | z | C | {head} | final held-out loss | Δ vs round 0 | "
             "updates clipped |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for p in pts:
        private = p.z is not None
        lines.append(
            f"| {p.algorithm} | {'server' if private else 'off'} | "
            f"{format(p.z, 'g') if private else '—'} | "
            f"{format(p.clip, 'g') if p.clip is not None else '—'} | {_eps(p)} | "
            f"{_loss(p)} | {p.mean - p.start:+.3f} | "
            f"{'—' if p.clipped is None else format(p.clipped, '.0%')} |")
    return "\n".join(lines) + "\n"


def plot(pts: list[Point], path: Path, title: str = "") -> None:
    """Held-out loss against epsilon (log x); z = 0 at a labelled right-hand position."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, NullLocator

    finite = [p.epsilon for p in pts if p.epsilon is not None and not math.isinf(p.epsilon)]
    lo, hi = (min(finite), max(finite)) if finite else (1.0, 1.0)
    x_inf = hi * 8  # where "unbounded" sits, right of every finite epsilon
    fig, ax = plt.subplots(figsize=(8, 4.8))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    algorithms = list(dict.fromkeys(p.algorithm for p in pts))
    z_at: dict[float, float] = {}
    for i, algorithm in enumerate(algorithms):
        color = colors[i % len(colors)]
        private = sorted((p for p in pts if p.algorithm == algorithm and p.epsilon is not None),
                         key=lambda p: p.epsilon)
        xs = [x_inf if math.isinf(p.epsilon) else p.epsilon for p in private]
        ys = [p.mean for p in private]
        if private:
            ax.errorbar(xs, ys, yerr=[p.std for p in private], fmt="o", color=color, capsize=4,
                        label=f"{algorithm}, dp=server")
            cut = sum(not math.isinf(p.epsilon) for p in private)  # solid up to the break
            ax.plot(xs[:cut], ys[:cut], "-", color=color)
            ax.plot(xs[max(cut - 1, 0):], ys[max(cut - 1, 0):], ":", color=color)
        for x, p in zip(xs, private, strict=True):
            z_at.setdefault(x, p.z)
        for p in pts:
            if p.algorithm == algorithm and p.epsilon is None:
                ax.axhline(p.mean, color=color, ls="--", lw=1.2,
                           label=f"{algorithm}, dp=off: {p.mean:.2f}")
    start = statistics.mean(p.start for p in pts)
    ax.axhline(start, color="0.4", ls=":", lw=1.5, label=f"round 0 (untrained): {start:.2f}")
    ax.set_xscale("log")
    decades = range(math.floor(math.log10(lo)), math.floor(math.log10(hi)) + 1)
    ticks = [10.0**d for d in decades]
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xticks(ticks + [x_inf], [f"{t:g}" for t in ticks] + ["∞\n(z = 0)"])
    ax.set_xlim(lo / 2, x_inf * 2)
    ax.axvline(math.sqrt(hi * x_inf), color="0.8", lw=6, zorder=0)  # the break before ∞
    for x, z in z_at.items():  # the noise multiplier of each epsilon, above the frame
        ax.text(x, 1.01, f"z={z:g}", transform=ax.get_xaxis_transform(), ha="center",
                va="bottom", fontsize=8, color="0.3")
    delta = next((p.delta for p in pts if p.delta), None)
    ax.set_xlabel("final ε" + (f" (δ = {delta:.3g})" if delta else "") + ", log scale; "
                  "smaller = more private")
    ax.set_ylabel("final held-out loss (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    if title:
        ax.set_title(textwrap.fill(title, 100), fontsize=9, pad=18)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(results: list[dict[str, Any]], seeds: list[int], out: Path, title: str = "") -> str:
    """``privacy.md`` and ``privacy.png`` in ``out``; returns the Markdown."""
    pts = points(results)
    md = table(pts, seeds)
    (out / "privacy.md").write_text(md)
    plot(pts, out / "privacy.png", title)
    return md


# ---- the 1,000-client part (suite privacy-1000) ------------------------------------------------
@dataclass
class Run:
    """One method of the population suite, averaged over seeds."""

    method: str
    algorithm: str
    private: bool
    z: float | None
    clip: float | None
    delta: float | None
    epsilon: float | None  # None: dp=off
    per_round: float  # clients per trained round (mean)
    rounds: int
    start: float  # round-0 held-out loss (mean over seeds)
    final: float  # final held-out loss (mean over seeds)
    final_std: float  # its std over seeds (0 with one seed)
    wall: float  # seconds per run (mean over seeds)
    curve: list[float]  # held-out loss per round (mean over seeds)
    norms: list[dict[str, float]]  # dp=off: per round p10 / p50 / p90 of the update norms


def population_runs(results: list[dict[str, Any]]) -> list[Run]:
    """Group the runs by method (in order of appearance), averaging over seeds."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for res in results:
        groups.setdefault(res["method"], []).append(res)
    out = []
    for method, runs in groups.items():
        last = runs[0]["rows"][-1]
        private = "dp_noise_multiplier" in last
        trained = [r for res in runs for r in res["rows"][1:] if r.get("clients")]
        eps = [r["rows"][-1].get("dp_epsilon") for r in runs] if private else []
        n = min(len(r["rows"]) for r in runs)
        norms = [{q: statistics.mean(r["norms"][i][q] for r in runs)
                  for q in ("round", "p10", "p50", "p90")}
                 for i in range(min(len(r.get("norms") or []) for r in runs))]
        out.append(Run(
            method, last.get("algorithm", method), private,
            last.get("dp_noise_multiplier"), last.get("dp_clip_norm"), last.get("dp_delta"),
            (math.inf if None in eps else max(eps)) if private else None,
            statistics.mean(r["clients"] for r in trained) if trained else 0.0,
            sum(1 for r in runs[0]["rows"] if r["round"] >= 1),
            statistics.mean(r["rows"][0]["eval_loss"] for r in runs),
            statistics.mean(r["rows"][-1]["eval_loss"] for r in runs),
            statistics.stdev(r["rows"][-1]["eval_loss"] for r in runs) if len(runs) > 1 else 0.0,
            statistics.mean(r["wall"] for r in runs),
            [statistics.mean(r["rows"][i]["eval_loss"] for r in runs) for i in range(n)],
            norms))
    return out


def kept(dp: Run, off: Run | None) -> float | None:
    """The fraction of the dp=off run's reduction of held-out loss that ``dp`` keeps:
    (round 0 - final with DP) / (round 0 - final without); None without a reference."""
    if off is None or off.start - off.final <= 0:
        return None
    return (dp.start - dp.final) / (off.start - off.final)


def population_table(runs: list[Run], seeds: list[int]) -> str:
    """ε, δ, z, C, clients/round, rounds, loss round 0 -> final, reduction kept, wall time."""
    lines = [f"Held-out loss, mean (± std of the final) over seeds {seeds}. Kept: the share "
             "of the dp=off run's reduction of held-out loss (round 0 - final) that the DP run "
             "keeps. Update norms: the dp=off run's contributions (what DP clips), median of "
             "the first and last round.", "",
             "| algorithm | dp | ε | δ | z | C | clients/round | rounds | held-out loss "
             "round 0 → final | kept | update norm p50 (first → last round) | wall s |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        off = next((o for o in runs if o.algorithm == r.algorithm and not o.private), None)
        k = kept(r, off) if r.private else None
        eps = "—" if r.epsilon is None else ("∞" if math.isinf(r.epsilon) else
                                             f"{r.epsilon:.2f}")
        norms = (f"{r.norms[0]['p50']:.3g} → {r.norms[-1]['p50']:.3g}" if r.norms else "—")
        lines.append(
            f"| {r.algorithm} | {'server' if r.private else 'off'} | {eps} | "
            f"{'—' if r.delta is None else format(r.delta, '.0e')} | "
            f"{'—' if r.z is None else format(r.z, 'g')} | "
            f"{'—' if r.clip is None else format(r.clip, 'g')} | {r.per_round:.0f} | "
            f"{r.rounds} | {r.start:.3f} → {r.final:.3f}"
            f"{f' ± {r.final_std:.3f}' if r.final_std else ''} | "
            f"{'—' if k is None else format(k, '.0%')} | {norms} | {r.wall:.0f} |")
    return "\n".join(lines) + "\n"


def population_plot(runs: list[Run], path: Path, title: str = "") -> None:
    """Left: held-out loss per round, dp=off solid, DP dashed, per algorithm. Right: the dp=off
    runs' update norms per round (median, 10-90% band) against the C the DP runs clip to."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax_n) = plt.subplots(1, 2, figsize=(12, 4.6))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    algorithms = list(dict.fromkeys(r.algorithm for r in runs))
    for i, algorithm in enumerate(algorithms):
        color = colors[i % len(colors)]
        for r in (r for r in runs if r.algorithm == algorithm):
            off = next((o for o in runs if o.algorithm == algorithm and not o.private), None)
            k = kept(r, off) if r.private else None
            label = (f"{algorithm}, dp=off" if not r.private else
                     f"{algorithm}, ε={r.epsilon:.1f} (z={r.z:g}, C={r.clip:g})"
                     + ("" if k is None else f": keeps {k:.0%}"))
            ax.plot(range(len(r.curve)), r.curve, "-" if not r.private else "--", marker="o",
                    ms=3, color=color, label=label)
            if r.norms:
                xs = [n["round"] for n in r.norms]
                ax_n.plot(xs, [n["p50"] for n in r.norms], "o-", ms=3, color=color,
                          label=f"{algorithm}: median update norm (dp=off)")
                ax_n.fill_between(xs, [n["p10"] for n in r.norms], [n["p90"] for n in r.norms],
                                  color=color, alpha=0.2)
            if r.private and r.clip is not None:
                ax_n.axhline(r.clip, color=color, ls="--", lw=1.2, label=f"{algorithm}: C")
    ax.set_xlabel("round")
    ax.set_ylabel("held-out loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax_n.set_yscale("log")
    ax_n.set_xlabel("round")
    ax_n.set_ylabel("L2 norm of a client's contribution")
    ax_n.grid(alpha=0.3)
    ax_n.legend(fontsize=8)
    if title:
        fig.suptitle(textwrap.fill(title, 120), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_population(results: list[dict[str, Any]], seeds: list[int], out: Path,
                     title: str = "") -> str:
    """``population.md`` and ``population.png`` in ``out``; returns the Markdown."""
    runs = population_runs(results)
    md = population_table(runs, seeds)
    (out / "population.md").write_text(md)
    population_plot(runs, out / "population.png", title)
    return md
