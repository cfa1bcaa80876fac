"""Experiment trackers (``report-to``): the names, the :class:`Tracker` protocol, the run's
tracker state (``RUN/trackers.json``) and :func:`open_trackers`, which opens the chosen ones
for a run and fans each metrics row out to them. Torch-free and library-free: each tracker's
module imports its library when it is opened or checked.

A tracker that is not installed or cannot start is one sentence (:func:`check_trackers`,
called before any engine starts); one that fails later is logged on the ``fedtune`` logger and
dropped for the rest of the run, which goes on with the others.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from fedtune.tracking.config import TRACKERS, parse_report_to

STATE = "trackers.json"
log = logging.getLogger("fedtune")


@dataclass
class RunInfo:
    """What a tracker is told about the run it follows."""

    run_dir: Path
    name: str  # the config's run name, e.g. fedit-sft
    algorithm: str
    objective: str
    config: dict[str, Any]  # the flat run config: the hyperparameters
    resumed_round: int | None = None  # resumed after this round (checkpoint), else None

    @property
    def run_name(self) -> str:
        """The tracker run's name: the run folder's (unique: ``<name>-<timestamp>``)."""
        return self.run_dir.name

    @property
    def tags(self) -> dict[str, str]:
        return {"run_name": self.name, "algorithm": self.algorithm,
                "objective": self.objective, "run_dir": str(self.run_dir)}


class Tracker(Protocol):
    """One tracker's run. ``last_step``: the last round it holds (-1: none), so a resumed run
    logs only what it lacks."""

    name: str
    last_step: int

    @property
    def where(self) -> str:
        """Where its run is, for the console (a folder, a URI and run id, a URL)."""

    def log(self, step: int, metrics: dict[str, float]) -> None: ...

    def finish(self, files: list[Path]) -> None:
        """Keep ``files`` (the final model folder, ``summary.json``) where the tracker keeps
        files, and close the run."""

    def close(self) -> None:
        """Close without finishing (a run that stops early; it may be resumed)."""

    def state(self) -> dict[str, Any]:
        """What ``trackers.json`` keeps to reopen this run (its id, where it lives)."""


def metrics_of(row: dict[str, Any]) -> dict[str, float]:
    """A metrics row's numbers, nested dicts flattened with ``/``; None, strings and
    non-finite values skipped; booleans as 0/1; ``round`` is the step, not a metric."""
    out: dict[str, float] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}/{key}" if prefix else str(key), inner)
        elif isinstance(value, bool):
            out[prefix] = float(value)
        elif isinstance(value, int | float) and math.isfinite(value):
            out[prefix] = float(value)

    for key, value in row.items():
        if key != "round":
            walk(key, value)
    return out


def _module(name: str):
    return importlib.import_module(TRACKERS[name])


def check_trackers(names: Iterable[str], run_dir: Path | None = None) -> None:
    """Each tracker's library imports and the tracker can start (MLflow reaches its store, W&B
    online has credentials): else one sentence naming the extra to install or what to fix."""
    for name in names:
        _module(name).check(run_dir)


def read_state(run_dir: Path) -> dict[str, dict[str, Any]]:
    path = Path(run_dir) / STATE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


@dataclass
class Trackers:
    """The open trackers of a run: each row goes to each, at its round; a failing tracker is
    logged once and dropped, never stopping the run or the others."""

    run_dir: Path
    open: list[Tracker] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.open]

    def describe(self) -> str:
        """One console line: each tracker and where its run is ("" if none)."""
        return "; ".join(f"{t.name}: {t.where}" for t in self.open)

    def _call(self, tracker: Tracker, what: str, call, *args: Any) -> bool:
        try:
            call(*args)
            return True
        except Exception as err:  # a tracker never stops the run
            log.warning("the %s tracker failed %s (%s: %s); the run goes on without it",
                      tracker.name, what, type(err).__name__, err)
            self.open.remove(tracker)
            self._save()
            return False

    def log_row(self, row: dict[str, Any]) -> None:
        """One ``metrics.jsonl`` row, at its round, to each tracker that lacks that round."""
        step, metrics = int(row["round"]), metrics_of(row)
        for tracker in list(self.open):
            if step > tracker.last_step and self._call(tracker, f"at round {step}",
                                                       tracker.log, step, metrics):
                tracker.last_step = step
        self._save()

    def finish(self, files: list[Path]) -> None:
        for tracker in list(self.open):
            self._call(tracker, "at the end", tracker.finish, files)
        self._save()
        self.open = []

    def close(self) -> None:
        for tracker in list(self.open):
            self._call(tracker, "closing", tracker.close)
        self.open = []

    def _save(self) -> None:
        if not self.open and not (self.run_dir / STATE).exists():
            return  # no tracker: no file
        saved = read_state(self.run_dir)
        for tracker in self.open:
            saved[tracker.name] = {**tracker.state(), "last_step": tracker.last_step}
        (self.run_dir / STATE).write_text(json.dumps(saved, indent=2))


def open_trackers(names: Iterable[str], info: RunInfo,
                  rows: list[dict[str, Any]] = ()) -> Trackers:
    """Open each named tracker for the run in ``info.run_dir``. On resume
    (``info.resumed_round`` set) a tracker with a saved state in ``trackers.json`` reopens the
    same run; ``rows`` (the rows so far) are logged to each tracker that lacks them. A tracker
    that fails to open is logged and left out (:func:`check_trackers` ran before the engine)."""
    saved = read_state(info.run_dir) if info.resumed_round is not None else {}
    trackers = Trackers(info.run_dir)
    for name in names:
        try:
            tracker = _module(name).open_run(info, saved.get(name))
        except Exception as err:
            log.warning("the %s tracker did not start (%s: %s); the run goes on "
                      "without it", name, type(err).__name__, err)
            continue
        trackers.open.append(tracker)
    trackers._save()
    for row in rows:
        trackers.log_row(row)
    return trackers


def log_final_metrics(run_dir: Path, values: dict[str, float]) -> list[str]:
    """Log ``values`` (e.g. lm-evaluation-harness scores) to the trackers of the finished run
    in ``run_dir`` (its ``report-to`` and ``trackers.json``), at its last round; the names of
    the trackers written. A tracker that fails is logged and skipped."""
    run_dir = Path(run_dir)
    try:
        config = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError):
        return []
    names = parse_report_to(config.get("output", {}).get("report_to", "none"))
    saved = read_state(run_dir)
    names = tuple(n for n in names if n in saved)
    if not names:
        return []
    step = max(int(saved[n].get("last_step", 0)) for n in names)
    flat = {k.replace("_", "-"): v for section in config.values() if isinstance(section, dict)
            for k, v in section.items()}
    train = config.get("train", {})
    info = RunInfo(run_dir, config.get("output", {}).get("run_name") or
                   f"{train.get('algorithm')}-{train.get('objective')}",
                   str(train.get("algorithm")), str(train.get("objective")), flat,
                   resumed_round=step)
    trackers = Trackers(run_dir)
    for name in names:
        try:
            tracker = _module(name).open_run(info, saved[name], extra=True)
        except Exception as err:
            log.warning("the %s tracker did not reopen (%s: %s)", name,
                      type(err).__name__, err)
            continue
        trackers.open.append(tracker)
    written = []
    for tracker in list(trackers.open):
        if trackers._call(tracker, "logging the scores", tracker.log, step, metrics_of(values)):
            written.append(tracker.name)
    trackers.close()
    return written
