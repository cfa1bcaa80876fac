"""Human-readable progress: one line per round and a final round-0-vs-last table."""

from __future__ import annotations

from typing import Any


def _fmt(value: Any, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def _mb(n: Any) -> str:
    return "-" if not n else f"{n / 1e6:.2f}MB" if n >= 1e5 else f"{n / 1e3:.1f}KB"


def _task(row: dict[str, Any]) -> str:
    if row.get("objective") == "dpo":  # held-out preference metrics
        return (f" | reward_acc {_fmt(row.get('reward_accuracy'))}"
                f" | margin {_fmt(row.get('reward_margin'))}")
    return (f" | exact_match {_fmt(row.get('exact_match'))}"
            f" | rouge_l {_fmt(row.get('rouge_l'))}")


def _privacy(row: dict[str, Any]) -> str:
    """Differential privacy's epsilon so far (inf: no noise)."""
    if "dp_epsilon" not in row:
        return ""
    eps = row["dp_epsilon"]
    return f" | eps {'inf' if eps is None or eps == float('inf') else format(eps, '.2f')}"


def round_line(row: dict[str, Any], num_rounds: int) -> str:
    return (
        f"round {row['round']:>3}/{num_rounds} | clients {row.get('clients', 0):>2}"
        f" | train_loss {_fmt(row.get('train_loss'))}"
        f" | eval_loss {_fmt(row.get('eval_loss'))}"
        f"{_task(row)}{_privacy(row)}"
        f" | down {_mb(row.get('bytes_down_per_client'))} up {_mb(row.get('bytes_up_per_client'))}"
        f" | {row.get('seconds', 0):.1f}s"
    )


def final_table(first: dict[str, Any], last: dict[str, Any]) -> str:
    keys = ["eval_loss", "perplexity", "exact_match", "rouge_l", "reward_accuracy",
            "reward_margin", "rewards_chosen", "rewards_rejected", "logps_chosen",
            "logps_rejected"] + sorted(
        k for k in last if k.startswith(("exact_match/", "rouge_l/", "evaluated/")))
    keys = [k for k in keys if first.get(k) is not None or last.get(k) is not None]
    width = max(24, *(len(k) + 2 for k in keys))
    lines = [f"{'metric':<{width}}{'round 0':>12}{'round ' + str(last['round']):>12}"]
    for k in keys:
        spec = ".0f" if k.startswith("evaluated/") else ".4f"
        lines.append(f"{k:<{width}}{_fmt(first.get(k), spec):>12}{_fmt(last.get(k), spec):>12}")
    return "\n".join(lines)
