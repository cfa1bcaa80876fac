"""The run folder contract: config.json, metrics.jsonl, summary.json, plot, final model."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedtune.config import Config

#: one line per valid train reply (round, node, its metrics); under DP one line of counts per
#: round (round, replies, dropped, timed_out): nothing per client (fedtune.flower.loop)
CLIENTS = "clients.jsonl"


@dataclass
class OutputConfig:
    """The ``output`` config section: where the run folder goes."""

    output_dir: str = "runs"  # where run folders go
    run_name: str = ""  # default: "<algorithm>-<objective>"
    run_dir: str = ""  # set by `fedtune simulate`; otherwise output-dir/run-name-timestamp
    resume: str = ""  # a run folder: continue it from its checkpoint (same config)
    # Where each node also writes what it keeps between rounds (FedSA's B, SCAFFOLD's c_i, a
    # merged base), so a resumed run finds it: `fedtune simulate` sets <run-dir>/node-state; a
    # deployed node sets its own with --node-config "state-dir='...'". "": node state only.
    node_state_dir: str = ""
    # Where this machine's processes share what is costly to rebuild and the same for all of
    # them: replayed FedKSeed/Ferret model versions, DPO reference log-probabilities ("" = no
    # sharing; `fedtune simulate` points it into the run folder).
    cache_dir: str = ""
    # experiment trackers that get every metrics row, the config and the final model: a comma
    # list of tensorboard, mlflow, wandb, or none (`pip install -e ".[tracking]"`)
    report_to: str = "none"

    def validate(self) -> None:
        """Any folder names are valid; resume's checkpoint is checked when the run starts;
        ``report-to`` names known trackers (whether they are installed is checked before the
        engine starts: :func:`fedtune.tracking.check_trackers`)."""
        from fedtune.tracking.config import parse_report_to

        parse_report_to(self.report_to)


def new_run_dir(cfg: Config) -> Path:
    """``output-dir/<name>-<timestamp>`` unless ``run-dir`` is set; never reuses a folder."""
    if cfg.output.run_dir:
        return Path(cfg.output.run_dir)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(cfg.output.output_dir) / f"{cfg.name}-{stamp}"
    path, i = base, 1
    while path.exists():
        path, i = base.with_name(f"{base.name}-{i}"), i + 1
    return path


def _clean(value: Any) -> Any:
    """JSON has no NaN: non-finite floats become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    return value


class RunWriter:
    """Appends one JSON line per round; writes the config and the summary."""

    def __init__(self, run_dir: Path, cfg: Config,
                 rows: list[dict[str, Any]] | None = None) -> None:
        """A new run, or (``rows`` given) a resumed one: its metrics so far are rewritten
        from the checkpoint, dropping any row logged after it."""
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.rows: list[dict[str, Any]] = list(rows or [])
        (self.dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
        (self.dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in self.rows))
        clients = self.dir / CLIENTS
        if clients.exists():  # a resumed run: keep the lines of the rounds it keeps
            last = self.rows[-1]["round"] if self.rows else -1
            kept = [line for line in clients.read_text().splitlines()
                    if line and json.loads(line)["round"] <= last]
            clients.write_text("".join(line + "\n" for line in kept))

    def log_round(self, row: dict[str, Any]) -> None:
        """One ``metrics.jsonl`` row; its ``replies`` (what each valid train reply reported,
        by node name; under DP the round's counts) go to ``clients.jsonl``, a line each."""
        replies = row.pop("replies", None) or []
        row = _clean(row)
        self.rows.append(row)
        with (self.dir / "metrics.jsonl").open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        if replies:
            with (self.dir / CLIENTS).open("a") as fh:
                fh.writelines(json.dumps(_clean({"round": row["round"], **r})) + "\n"
                              for r in replies)

    def write_summary(self, extra: dict[str, Any]) -> dict[str, Any]:
        first, last = self.rows[0], self.rows[-1]
        summary = {
            "rounds": last["round"],
            "initial": first,
            "final": last,
            "total_bytes_per_client": sum(
                (r.get("bytes_down_per_client") or 0) + (r.get("bytes_up_per_client") or 0)
                for r in self.rows
            ),
            "total_seconds": sum(r.get("seconds") or 0 for r in self.rows),
            **extra,
        }
        (self.dir / "summary.json").write_text(json.dumps(_clean(summary), indent=2))
        return summary

