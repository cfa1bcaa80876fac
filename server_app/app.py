"""ServerApp: run_config -> typed config -> the algorithm from the registry -> rounds -> results."""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from flwr.superlink.grid import HttpGrid

from fedtune.config import Config
from fedtune.flower.server import run_server
from fedtune.logs import quiet_third_party
from fedtune.strategies.trust import resolve_weights

quiet_third_party()
app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """``example-weights='auto'`` becomes ``capped`` when this ServerApp runs through a SuperLink
    (Flower's HttpGrid: real SuperNodes), ``reported`` on the simulation engine or a test Grid."""
    cfg = Config.from_flat(dict(context.run_config))
    resolve_weights(cfg.strategy, deployed=isinstance(grid, HttpGrid), masked=cfg.secagg.enabled)
    run_server(grid, cfg)
