"""ServerApp: run_config -> typed config -> algorithm + strategy -> rounds -> results folder."""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedtune.config import Config
from fedtune.flower.server import run_server
from fedtune.logs import quiet_third_party
from server_app.strategies import fedit_strategy

quiet_third_party()
app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = Config.from_flat(dict(context.run_config))
    run_server(grid, cfg, fedit_strategy(cfg))
