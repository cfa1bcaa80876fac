"""Run a whole job on a Grid: results folder, progress, the final model and the plot."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedtune.config import ZO_ALGORITHMS, Config
from fedtune.fedit.server import FedITServer
from fedtune.fedkseed.server import FedKSeedServer
from fedtune.flower.checkpoint import (
    Checkpoint,
    CheckpointError,
    config_changes,
    load_checkpoint,
    load_strategy_state,
    save_checkpoint,
    strategy_state,
)
from fedtune.flower.loop import run_rounds
from fedtune.flower.validate import check_arrays, check_train_reply, check_zo_reply
from fedtune.plot import plot_metrics
from fedtune.progress import final_table, round_line
from fedtune.results import RunWriter, new_run_dir

Check = Callable[[RecordDict], str | None]


def server_side(cfg: Config) -> tuple[FedITServer | FedKSeedServer, Check]:
    """The algorithm's server object and the check its train replies must pass."""
    if cfg.train.algorithm in ZO_ALGORITHMS:
        zo = FedKSeedServer(cfg)
        return zo, lambda c: check_zo_reply(c, cfg.zo.zo_seeds, cfg.zo.zo_steps)
    lora = FedITServer(cfg)
    spec = lora.spec()
    if cfg.strategy.strategy == "scaffold":  # replies also carry c_i+ - c_i, same shapes
        return lora, lambda c: check_train_reply(c, spec) or (
            check_arrays(c.array_records["scaffold"], spec) if "scaffold" in c.array_records
            else "no 'scaffold' record (SCAFFOLD control variate change)")
    return lora, lambda c: check_train_reply(c, spec)


def run_server(grid: Grid, cfg: Config, algo: FedITServer | FedKSeedServer, check: Check,
               strategy: Strategy) -> Path:
    """Everything the ServerApp does; returns the run folder.

    With ``resume`` set, the run continues in that folder from its last checkpoint.
    """
    flat = cfg.to_flat()
    resume_from = None
    if cfg.output.resume:
        run_dir = Path(cfg.output.resume)
        ckpt = load_checkpoint(run_dir)
        changes = config_changes(ckpt.config, flat)
        if changes:
            raise CheckpointError(f"cannot resume '{run_dir}' with another config ("
                                  + "; ".join(changes) + "): pass the original run's config")
        algo.load_state_dict(ckpt.algorithm)
        load_strategy_state(strategy, ckpt.strategy)
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

    arrays = run_rounds(grid, cfg, algo, strategy, check, on_round, resume_from=resume_from,
                        on_checkpoint=on_checkpoint)
    saved = algo.save(arrays, run_dir)
    cache = Path(cfg.zo.zo_cache_dir) if cfg.zo.zo_cache_dir else None
    if cache is not None and cache.resolve().is_relative_to(run_dir.resolve()):
        shutil.rmtree(cache, ignore_errors=True)  # shared replays of this run only
    writer.write_summary({"result": str(saved)})
    plot_metrics(writer.rows, run_dir / "metrics.png", f"{cfg.name}: {cfg.model.model}")
    print(final_table(writer.rows[0], writer.rows[-1]), flush=True)
    print(f"result: {saved}\nplot: {run_dir / 'metrics.png'}", flush=True)
    return run_dir
