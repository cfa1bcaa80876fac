"""The one run driver: a run's folder, its progress lines, its experiment trackers
(``report-to``) and its finish, for a Flower run (:mod:`fedtune.flower.server`) and an
in-process baseline (:mod:`fedtune.algorithms.baselines`) alike. The rounds themselves are the
caller's."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedtune.plot import plot_metrics
from fedtune.progress import final_table, round_line
from fedtune.results import RunWriter, new_run_dir
from fedtune.tracking import RunInfo, open_trackers, parse_report_to

if TYPE_CHECKING:
    from fedtune.config import Config


class RunDriver:
    """A new run folder (``output-dir/<name>-<time>`` or ``run-dir``), or with ``resume_rows``
    the resumed folder ``resume`` holding those rows; rows go to ``metrics.jsonl``, to the
    trackers of ``report-to`` (a resumed run continues their runs) and, one line each, to the
    console."""

    def __init__(self, cfg: Config, headline: str,
                 resume_rows: list[dict[str, Any]] | None = None) -> None:
        self.cfg = cfg
        if resume_rows is not None:
            self.dir = Path(cfg.output.resume)
            self.writer = RunWriter(self.dir, cfg, rows=resume_rows)
            print(f"fedtune: resuming {self.dir} after round {resume_rows[-1]['round']}",
                  flush=True)
        else:
            self.dir = new_run_dir(cfg)
            self.writer = RunWriter(self.dir, cfg)
            print(f"fedtune: {headline}, results in {self.dir}", flush=True)
        names = parse_report_to(cfg.output.report_to)
        info = RunInfo(self.dir, cfg.name, cfg.train.algorithm, cfg.train.objective,
                       cfg.to_flat(),
                       resumed_round=resume_rows[-1]["round"] if resume_rows else None)
        self.trackers = open_trackers(names, info, self.writer.rows)
        if self.trackers.open:
            print(f"fedtune: tracking to {self.trackers.describe()}", flush=True)

    @property
    def rows(self) -> list[dict[str, Any]]:
        return self.writer.rows

    def log(self, row: dict[str, Any]) -> None:
        self.writer.log_round(row)
        self.trackers.log_row(self.writer.rows[-1])
        print(round_line(row, self.cfg.server.num_server_rounds), flush=True)

    def finish(self, result: Path, title: str, report: dict[str, Any] | None = None) -> Path:
        """Remove this run's shared caches, write ``summary.json`` (the result, skipped rounds,
        ``report``), plot the metrics, print the first/last table; returns the run folder."""
        for folder in (self.cfg.output.cache_dir, self.cfg.output.node_state_dir):
            # of this run only: the shared replays, the nodes' snapshots (a finished run is
            # not resumed)
            if folder and Path(folder).resolve().is_relative_to(self.dir.resolve()):
                shutil.rmtree(folder, ignore_errors=True)
        skipped = skipped_rounds(self.rows)
        self.writer.write_summary({"result": str(result), **skipped, **(report or {})})
        plot_metrics(self.rows, self.dir / "metrics.png", f"{self.cfg.name}: {title}")
        self.trackers.finish([Path(result), self.dir / "summary.json", self.dir / "metrics.png"])
        print(final_table(self.rows[0], self.rows[-1]), flush=True)
        print(f"result: {result}\nplot: {self.dir / 'metrics.png'}", flush=True)
        if skipped["skipped_rounds"]:  # every round skipped is a failed run: on stderr
            every = len(skipped["skipped_rounds"]) == skipped["rounds_run"]
            print(f"fedtune: {skipped['skip_report']}", file=sys.stderr if every else sys.stdout,
                  flush=True)
        return self.dir


def skipped_rounds(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The summary's account of skipped rounds: ``rounds_run`` (rounds >= 1 this run folder
    holds), ``skipped_rounds`` (their numbers) and ``skip_report``, one sentence saying how
    many and why (the first skipped round's reason); ``fedtune simulate`` exits 1 when every
    round was skipped, since the model then never trained."""
    run = [r for r in rows if r["round"] >= 1]
    skipped = [r for r in run if r.get("skipped")]
    out: dict[str, Any] = {"rounds_run": len(run), "skipped_rounds": [r["round"] for r in skipped]}
    if skipped:
        first = skipped[0]
        why = f"round {first['round']}: {first.get('skip_reason') or 'see the log'}"
        out["skip_report"] = (
            f"every round ({len(run)} of {len(run)}) was skipped, so the model never trained "
            f"({why})"
            if len(skipped) == len(run) else
            f"{len(skipped)} of {len(run)} rounds were skipped (rounds "
            f"{', '.join(str(r['round']) for r in skipped)}; first {why})") + "."
    return out
