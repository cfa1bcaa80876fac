"""Ferret (Shu et al., "Ferret: Federated Full-Parameter Tuning at Scale for Large Language
Models", ICML 2025; official code allen4747/Ferret): clients take first-order steps on every
weight, project their update block-wise onto directions from a fixed pool of K shared seeds and
upload only the coefficients; every party reconstructs the aggregated update from the seeds.

``config`` (the ``ferret-*`` section), ``blocks`` (the block layout), ``projection`` (the
estimator and its reference reconstruction), ``model`` (exact versions on :mod:`fedtune.seeded`),
``client``, ``server``. Its aggregation is the ``seeds`` strategy, shared with FedKSeed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedtune.algorithms.base import Algorithm
from fedtune.algorithms.fedkseed import _simulation_setup

if TYPE_CHECKING:
    from fedtune.config import Config


def _client(cfg: Config):
    from fedtune.algorithms.ferret.client import FerretClient

    return FerretClient(cfg)


def _server(cfg: Config):
    from fedtune.algorithms.ferret.server import FerretServer

    return FerretServer(cfg)


FERRET = Algorithm(
    name="ferret",
    summary="full-parameter first-order local steps, projected onto K shared seeds; uploads "
            "the coefficients",
    payload="seeds",
    client=_client,
    server=_server,
    simulation_setup=_simulation_setup,
)
