"""ServerApp: run_config -> typed config -> the algorithm from the registry -> rounds -> results."""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from flwr.superlink.grid import HttpGrid

from fedtune.config import Config
from fedtune.flower.server import run_server
from fedtune.logs import quiet_third_party
from fedtune.strategies.trust import resolve_weights
from fedtune.tracking import check_trackers, parse_report_to

quiet_third_party()
app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """``example-weights='auto'`` becomes ``capped`` when this ServerApp runs through a SuperLink
    (Flower's HttpGrid: real SuperNodes), ``reported`` on the simulation engine or a test Grid;
    there, DP needs ``dp-population`` (in simulation it defaults to the number of clients)."""
    cfg = Config.from_flat(dict(context.run_config))
    deployed = isinstance(grid, HttpGrid)
    resolve_weights(cfg.strategy, deployed=deployed, masked=cfg.secagg.enabled)
    privacy = cfg.privacy
    privacy.check_population(privacy.population(cfg.server.min_available_nodes), deployed)
    check_trackers(parse_report_to(cfg.output.report_to))  # report-to: installed, can start
    run_server(grid, cfg, run_id=context.run_id)
