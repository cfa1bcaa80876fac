"""ServerApp: run_config -> typed config -> the algorithm from the registry -> rounds -> results."""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedtune.config import Config
from fedtune.flower.server import run_server
from fedtune.logs import quiet_third_party

quiet_third_party()
app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    run_server(grid, Config.from_flat(dict(context.run_config)))
