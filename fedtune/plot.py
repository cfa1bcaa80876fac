"""A PNG of the metrics per round (losses and the task metric)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_metrics(rows: list[dict[str, Any]], out: Path, title: str) -> Path:
    """Left: train / eval loss per round. Right: exact match (overall and per category) and
    Rouge-L; for DPO runs, held-out reward accuracy and (right axis) the mean reward margin."""
    rounds = [r["round"] for r in rows]
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(11.5, 4))
    for key, style in (("eval_loss", "o-"), ("train_loss", "s--"), ("fed_eval_loss", "^:")):
        pts = [(r["round"], r[key]) for r in rows if r.get(key) is not None]
        if pts:
            ax_loss.plot(*zip(*pts, strict=True), style, label=key)
    dpo = any(r.get("objective") == "dpo" for r in rows)
    ax_loss.set_xlabel("round")
    ax_loss.set_ylabel("DPO loss (pairs)" if dpo else "loss (response tokens)")
    ax_loss.legend()
    ax_loss.grid(alpha=0.3)
    if any(r.get("reward_accuracy") is not None for r in rows):
        _preference_panel(ax_metric, rows)
        metric_keys = []
    else:
        metric_keys = sorted({k for r in rows for k in r if k.startswith("exact_match")})
    for key in metric_keys:
        pts = [(r["round"], r[key]) for r in rows if r.get(key) is not None]
        ax_metric.plot(*zip(*pts, strict=True), "o-" if key == "exact_match" else ".:",
                       label=key, linewidth=2.5 if key == "exact_match" else 1)
    pts = [(r["round"], r["rouge_l"]) for r in rows if r.get("rouge_l") is not None]
    if pts:
        ax_metric.plot(*zip(*pts, strict=True), "k--", label="rouge_l", linewidth=2)
        metric_keys.append("rouge_l")
    ax_metric.set_xlabel("round")
    if not any(r.get("reward_accuracy") is not None for r in rows):
        ax_metric.set_ylabel("exact match / Rouge-L (held-out)")
        ax_metric.set_ylim(-0.02, 1.02)
    if metric_keys:  # beside the panel: inside, it hid points (a category's early spikes)
        ax_metric.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0)
    ax_metric.grid(alpha=0.3)
    ticks = rounds if len(rounds) <= 13 else rounds[:: max(2, len(rounds) // 10)]
    ax_loss.set_xticks(ticks)
    ax_metric.set_xticks(ticks)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _preference_panel(ax, rows: list[dict[str, Any]]) -> None:
    """Reward accuracy on [0, 1]; the reward margin on a twin axis."""
    pts = [(r["round"], r["reward_accuracy"]) for r in rows if r.get("reward_accuracy") is not None]
    ax.plot(*zip(*pts, strict=True), "o-", label="reward_accuracy", linewidth=2.5)
    ax.set_ylabel("reward accuracy (held-out pairs)")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(loc="upper left", fontsize=8)
    twin = ax.twinx()
    pts = [(r["round"], r["reward_margin"]) for r in rows if r.get("reward_margin") is not None]
    if pts:
        twin.plot(*zip(*pts, strict=True), "s--", color="tab:orange", label="reward_margin")
        twin.set_ylabel("mean reward margin")
        twin.legend(loc="lower right", fontsize=8)
