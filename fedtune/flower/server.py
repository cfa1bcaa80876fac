"""Run a whole job on a Grid: results folder, progress, the final model and the plot."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
from flwr.serverapp import Grid

from fedtune.algorithms import resolve
from fedtune.checkpoint import (
    Checkpoint,
    CheckpointError,
    config_changes,
    config_fingerprint,
    load_checkpoint,
    save_checkpoint,
    strategy_state,
)
from fedtune.config import Config
from fedtune.errors import ConfigError
from fedtune.flower.loop import run_rounds
from fedtune.plot import plot_metrics
from fedtune.privacy.randomness import WARNING, announce
from fedtune.progress import final_table, round_line
from fedtune.results import RunWriter, new_run_dir
from fedtune.seeding import deterministic_cuda
from fedtune.strategies import build_strategy
from fedtune.strategies.hooks import hooks_of


def run_server(grid: Grid, cfg: Config, run_id: int = 0) -> Path:
    """Everything the ServerApp does; returns the run folder.

    The algorithm comes from the registry, its strategy from the strategy registry. With
    ``resume`` set, the run continues in that folder from its last checkpoint. ``run_id``:
    Flower's (secure aggregation binds its keys to it).
    """
    algorithm = resolve(cfg)
    deterministic_cuda(cfg.model.deterministic, cfg.model.device)  # before any CUDA work
    if not algorithm.federated:
        raise ConfigError(f"'{algorithm.name}' is a baseline without federation; run it with "
                          f"`fedtune simulate --algorithm {algorithm.name}`.")
    algo = algorithm.server(cfg)
    strategy = build_strategy(cfg, algorithm.payload, algo)
    flat = cfg.to_flat()
    hooks = hooks_of(strategy)
    hooks.bind_run(run_id, config_fingerprint(flat))
    if (cfg.privacy.enabled or cfg.secagg.enabled) and announce():
        print(f"fedtune: WARNING: {WARNING}.", flush=True)
    resume_from = None
    if cfg.output.resume:
        run_dir = Path(cfg.output.resume)
        ckpt = load_checkpoint(run_dir)
        changes = config_changes(ckpt.config, flat)
        if changes:
            raise CheckpointError(f"cannot resume '{run_dir}' with another config ("
                                  + "; ".join(changes) + "): pass the original run's config")
        algo.load_state_dict(ckpt.algorithm)
        strategy.load_state_dict(ckpt.strategy)
        writer = RunWriter(run_dir, cfg, rows=ckpt.rows)
        resume_from = (ckpt.round, ckpt.arrays)
        print(f"fedtune: resuming {run_dir} after round {ckpt.round}", flush=True)
    else:
        run_dir = new_run_dir(cfg)
        writer = RunWriter(run_dir, cfg)
        print(f"fedtune: {cfg.train.algorithm}/{cfg.train.objective} on '{cfg.model.model}', "
              f"results in {run_dir}", flush=True)

    def on_round(row: dict[str, Any]) -> None:
        writer.log_round(row)
        print(round_line(row, cfg.server.num_server_rounds), flush=True)

    def on_checkpoint(rnd: int, arrays: dict[str, np.ndarray]) -> None:
        save_checkpoint(run_dir, Checkpoint(rnd, flat, arrays, algo.state_dict(),
                                            strategy_state(strategy), writer.rows))

    arrays = run_rounds(grid, cfg, algo, strategy, on_round, resume_from=resume_from,
                        on_checkpoint=on_checkpoint)
    saved = algo.save(arrays, run_dir)
    for folder in (cfg.zo.zo_cache_dir, cfg.output.node_state_dir):  # of this run only: the
        # shared replays, the nodes' snapshots (a finished run is not resumed)
        if folder and Path(folder).resolve().is_relative_to(run_dir.resolve()):
            shutil.rmtree(folder, ignore_errors=True)
    skipped = skipped_rounds(writer.rows)
    writer.write_summary({"result": str(saved), **skipped, **hooks.final_report()})
    plot_metrics(writer.rows, run_dir / "metrics.png", f"{cfg.name}: {cfg.model.model}")
    print(final_table(writer.rows[0], writer.rows[-1]), flush=True)
    print(f"result: {saved}\nplot: {run_dir / 'metrics.png'}", flush=True)
    if skipped["skipped_rounds"]:  # every round skipped is a failed run: on stderr
        every = len(skipped["skipped_rounds"]) == skipped["rounds_run"]
        print(f"fedtune: {skipped['skip_report']}", file=sys.stderr if every else sys.stdout,
              flush=True)
    return run_dir


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
