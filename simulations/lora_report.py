"""The LoRA-aggregation report of ``python -m simulations.benchmark --suite lora-aggregation``.

From the runs of one suite (``fedit`` with each ``lora-aggregation`` variant, some also with
heterogeneous ``lora-ranks``) it writes ``lora.md``, a table of the final held-out loss, task
metric and personalised federated eval loss against the communication cost, and ``lora.png``:
held-out loss against the cumulative bytes per participating client (log x) and per round.
Everything is read from the runs' metrics rows and ``total_bytes`` (the summary's
``total_bytes_per_client``). Methods appear in the order of their first run, i.e. suite order.
"""

from __future__ import annotations

import itertools
import statistics
import textwrap
from pathlib import Path
from typing import Any

from simulations.benchmark import _round_bytes, _stat

METRICS = ("exact_match", "rouge_l")


def _last(rows: list[dict[str, Any]], key: str) -> float | None:
    """The value of ``key`` in the last row that has one (not None), else None."""
    return next((float(r[key]) for r in reversed(rows) if r.get(key) is not None), None)


def _cell(values: list[float | None], fmt: str) -> str:
    """Mean ± std over the values that are not None; "—" if none is."""
    present = [v for v in values if v is not None]
    return _stat(present, fmt) if present else "—"


def _metric(results: list[dict[str, Any]]) -> str:
    """The task metric the rows carry: the first of :data:`METRICS` found in any row."""
    keys = {k for res in results for row in res["rows"] for k, v in row.items() if v is not None}
    return next((m for m in METRICS if m in keys), METRICS[0])


def by_method(results: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The runs grouped by method, in order of first appearance."""
    out: dict[str, list[dict[str, Any]]] = {}
    for res in results:
        out.setdefault(res["method"], []).append(res)
    return out


def cumulative_bytes(rows: list[dict[str, Any]]) -> list[float]:
    """Bytes per participating client (down + up) summed up to each row; round 0 is 0."""
    per_round = ((r.get("bytes_down_per_client") or 0) + (r.get("bytes_up_per_client") or 0)
                 for r in rows)
    return [float(b) for b in itertools.accumulate(per_round)]


def table(results: list[dict[str, Any]], seeds: list[int], metric: str,
          description: str = "") -> str:
    """A Markdown table, one line per method: final losses and metric against bytes moved."""
    lines = [f"### LoRA aggregation: {description}", ""] if description else []
    lines += [f"Mean ± std over seeds {seeds}. Held-out loss and `{metric}` on the server's "
              "held-out set after the last round; fed eval loss: the personalised federated "
              "evaluation (`fed_eval_loss`, each client's own eval split) of the last round "
              "that ran one, — if none did. Bytes: measured messages, down + up per "
              "participating client; total = summed over trained rounds.", "",
              f"| method | final held-out loss | final {metric} | final fed eval loss | "
              "total bytes/client | bytes/client/round | wall s | peak MiB |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for method, runs in by_method(results).items():
        rows = [r["rows"] for r in runs]
        lines.append(
            f"| {method} | {_cell([_last(x, 'eval_loss') for x in rows], '.3f')} | "
            f"{_cell([_last(x, metric) for x in rows], '.3f')} | "
            f"{_cell([_last(x, 'fed_eval_loss') for x in rows], '.3f')} | "
            f"{_stat([float(r['total_bytes']) for r in runs], ',.0f')} | "
            f"{_stat([_round_bytes(x) for x in rows], ',.0f')} | "
            f"{_stat([float(r['wall']) for r in runs], '.0f')} | "
            f"{_stat([float(r['peak_mib']) for r in runs], '.0f')} |")
    return "\n".join(lines) + "\n"


#: Methods whose clients keep part of the model (FedSA-LoRA's B): the plot also shows their
#: personalised loss (``fed_eval_loss``, each client's model on its own held-out split), since
#: the server's model (B = 0) is not what they are used as.
PERSONALISED = ("fedsa",)


def _mean_curves(runs: list[dict[str, Any]], key: str = "eval_loss"
                 ) -> tuple[list[int], list[float], list[float | None]]:
    """Rounds, cumulative bytes and ``key`` (None where a row lacks it), each the mean over
    seeds (common rounds)."""
    n = min(len(r["rows"]) for r in runs)
    rounds = [int(row["round"]) for row in runs[0]["rows"][:n]]
    xs = [statistics.mean(c) for c in zip(*(cumulative_bytes(r["rows"])[:n] for r in runs),
                                          strict=True)]
    ys = [statistics.mean(vals) if len(vals := [float(r["rows"][i][key]) for r in runs
                                                if r["rows"][i].get(key) is not None])
          == len(runs) else None for i in range(n)]
    return rounds, xs, ys


def plot(results: list[dict[str, Any]], path: Path, title: str = "") -> None:
    """Held-out loss against cumulative bytes per client (log x) and against the round.

    Round 0 (no bytes moved yet) cannot sit on a log axis, so the bytes panel starts at round 1
    and shows the untrained round-0 loss as a dotted horizontal line instead. A ``-het`` method
    (heterogeneous ranks) takes its base method's colour, dashed, with square markers.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_bytes, ax_round) = plt.subplots(1, 2, figsize=(12, 4.8))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    base_color: dict[str, str] = {}
    starts: list[float] = []
    for method, runs in by_method(results).items():
        base = method.removesuffix("-het")
        color = base_color.setdefault(base, colors[len(base_color) % len(colors)])
        style = {"color": color, "ls": "--" if base != method else "-",
                 "marker": "s" if base != method else "o", "ms": 4, "label": method}
        curves = [("eval_loss", style)]
        if base in PERSONALISED:
            curves.append(("fed_eval_loss", {**style, "ls": ":", "marker": "^",
                                             "label": f"{method} personalised (fed eval)"}))
        for key, how in curves:  # rounds without the value (eval-every > 1) are skipped
            rounds, xs, ys = _mean_curves(runs, key)
            if key == "eval_loss":
                starts.append(ys[0])
            points = [(r, x, y) for r, x, y in zip(rounds, xs, ys, strict=True)
                      if y is not None]
            if trained := [(x, y) for r, x, y in points if r > 0 and x > 0]:
                ax_bytes.plot(*zip(*trained, strict=True), **how)
            ax_round.plot([p[0] for p in points], [p[2] for p in points], **how)
    if starts:
        start = statistics.mean(starts)
        for ax in (ax_bytes, ax_round):
            ax.axhline(start, color="0.4", ls=":", lw=1.2,
                       label=f"round 0 (untrained): {start:.2f}")
    ax_bytes.set_xscale("log")
    ax_bytes.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax_bytes.set_xlabel("cumulative bytes per participating client (down + up), log scale")
    ax_round.set_xlabel("round")
    for ax in (ax_bytes, ax_round):
        ax.set_ylabel("held-out loss (mean over seeds)")
        ax.grid(alpha=0.3, which="both")
    ax_bytes.set_title("loss against communication", fontsize=9)
    ax_round.set_title("loss per round", fontsize=9)
    ax_round.legend(fontsize=8, loc="upper right")
    if title:
        fig.suptitle(textwrap.fill(title, 120), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(results: list[dict[str, Any]], seeds: list[int], out: Path, description: str = "",
          metric: str | None = None) -> str:
    """``lora.md`` and ``lora.png`` in ``out``; returns the Markdown.

    ``metric``: the task metric column (``exact_match`` or ``rouge_l``); by default, whichever
    the rows carry.
    """
    md = table(results, seeds, metric or _metric(results), description)
    (out / "lora.md").write_text(md)
    plot(results, out / "lora.png", description)
    return md
