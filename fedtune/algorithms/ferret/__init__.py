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

if TYPE_CHECKING:
    from pathlib import Path

    from fedtune.config import Config


def _client(cfg: Config):
    from fedtune.algorithms.ferret.client import FerretClient

    return FerretClient(cfg)


def _server(cfg: Config):
    from fedtune.algorithms.ferret.server import FerretServer

    return FerretServer(cfg)


def _load_result(run_dir: Path):
    from fedtune.models.saved import load_model_folder

    return load_model_folder(run_dir / "model")  # the reconstructed model


FERRET = Algorithm(
    name="ferret",
    summary="full-parameter first-order local steps, projected onto K shared seeds; uploads "
            "the coefficients",
    payload="seeds",
    sections=("ferret",),
    client=_client,
    server=_server,
    load_result=_load_result,
)
