"""Run a whole FedIT job on a Grid: results folder, progress, final adapter and plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedtune.config import Config
from fedtune.fedit.server import FedITServer
from fedtune.flower.loop import run_rounds
from fedtune.flower.validate import check_train_reply
from fedtune.plot import plot_metrics
from fedtune.progress import final_table, round_line
from fedtune.results import RunWriter, new_run_dir


def run_server(grid: Grid, cfg: Config, strategy: Strategy) -> Path:
    """Everything the ServerApp does; returns the run folder."""
    run_dir = new_run_dir(cfg)
    writer = RunWriter(run_dir, cfg)
    algo = FedITServer(cfg)
    print(f"fedtune: {cfg.train.algorithm}/{cfg.train.objective} on '{cfg.model.model}', "
          f"results in {run_dir}", flush=True)

    def on_round(row: dict[str, Any]) -> None:
        writer.log_round(row)
        print(round_line(row, cfg.server.num_server_rounds), flush=True)

    spec = algo.spec()
    arrays = run_rounds(grid, cfg, algo, strategy, lambda c: check_train_reply(c, spec), on_round)
    adapter_dir = algo.save(arrays, run_dir)
    writer.write_summary({"adapter": str(adapter_dir)})
    plot_metrics(writer.rows, run_dir / "metrics.png", f"{cfg.name}: {cfg.model.model}")
    print(final_table(writer.rows[0], writer.rows[-1]), flush=True)
    print(f"adapter: {adapter_dir}\nplot: {run_dir / 'metrics.png'}", flush=True)
    return run_dir
