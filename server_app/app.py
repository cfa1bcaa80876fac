"""ServerApp: run_config -> typed config -> algorithm + strategy -> rounds -> results folder."""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedtune.config import Config
from fedtune.flower.server import run_server, server_side
from fedtune.logs import quiet_third_party
from server_app.strategies import make_strategy

quiet_third_party()
app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = Config.from_flat(dict(context.run_config))
    algo, check = server_side(cfg)
    run_server(grid, cfg, algo, check, make_strategy(cfg, algo))
