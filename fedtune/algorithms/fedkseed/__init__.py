"""FedKSeed (Qin et al., "Federated Full-Parameter Tuning of Billion-Sized Language Models with
Communication Cost under 18 Kilobytes", ICML 2024): clients take zeroth-order steps along
perturbations drawn from a fixed pool of K seeds and upload only (seed index, scalar) pairs;
every party holds the same model w = w0 - lr * sum_s A_s z(s). FedKSeed-Pro samples seeds by
importance.

The math lives in ``fedtune.seeded``; this package is the algorithm: ``config`` (the ``zo-*``
section), ``defaults`` (lr and eps for the model size), ``model`` (the process's model and its
versions), ``client``, ``server``, ``pro`` (importance on the wire), ``dpo``, ``export``. Its
aggregation is the strategy ``fedtune.strategies.seeds``.
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING

from fedtune.algorithms.base import Algorithm

if TYPE_CHECKING:
    from pathlib import Path

    from fedtune.config import Config


def _client(cfg: Config):
    from fedtune.algorithms.fedkseed.client import FedKSeedClient

    return FedKSeedClient(cfg)


def _server(cfg: Config, pro: bool):
    from fedtune.algorithms.fedkseed.server import FedKSeedServer

    return FedKSeedServer(cfg, pro=pro)


def _load_result(run_dir: Path):
    from fedtune.algorithms.fedkseed.export import materialize

    return materialize(run_dir)  # the seeds' exact replay onto the base model


FEDKSEED = Algorithm(
    name="fedkseed",
    summary="full-parameter zeroth-order steps from K shared seeds; uploads (seed, scalar) pairs",
    payload="seeds",
    sections=("zo",),
    load_result=_load_result,
    client=_client,
    server=partial(_server, pro=False),
)


FEDKSEED_PRO = replace(FEDKSEED, name="fedkseed-pro", server=partial(_server, pro=True),
                       summary="FedKSeed with seeds sampled by their importance")
