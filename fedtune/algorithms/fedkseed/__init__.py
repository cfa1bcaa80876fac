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
from pathlib import Path
from typing import TYPE_CHECKING

from fedtune.algorithms.base import Algorithm

if TYPE_CHECKING:
    from fedtune.config import Config


def _client(cfg: Config):
    from fedtune.algorithms.fedkseed.client import FedKSeedClient

    return FedKSeedClient(cfg)


def _server(cfg: Config, pro: bool):
    from fedtune.algorithms.fedkseed.server import FedKSeedServer

    return FedKSeedServer(cfg, pro=pro)


def _simulation_setup(cfg: Config) -> None:
    """Processes of one simulation share replayed versions through a cache in the run folder."""
    if not cfg.zo.zo_cache_dir:
        cfg.zo.zo_cache_dir = str(Path(cfg.output.run_dir) / "zo-cache")


FEDKSEED = Algorithm(
    name="fedkseed",
    summary="full-parameter zeroth-order steps from K shared seeds; uploads (seed, scalar) pairs",
    payload="seeds",
    client=_client,
    server=partial(_server, pro=False),
    simulation_setup=_simulation_setup,
)


FEDKSEED_PRO = replace(FEDKSEED, name="fedkseed-pro", server=partial(_server, pro=True),
                       summary="FedKSeed with seeds sampled by their importance")
