"""Algorithms, one folder each, and the registry that maps a name to one.

The client app, the server app, the CLI and the checkpoint code ask this registry and never
compare algorithm names. Adding an algorithm = one new folder with an
:class:`~fedtune.algorithms.base.Algorithm` entry + one line in ``REGISTRY`` below. Importing
this module is light: an algorithm's client and server modules (torch, transformers) load only
when its sides are built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedtune.algorithms.base import Algorithm
from fedtune.algorithms.baselines import CENTRALIZED, LOCAL
from fedtune.algorithms.fedit import FEDIT
from fedtune.algorithms.fedkseed import FEDKSEED, FEDKSEED_PRO
from fedtune.algorithms.ferret import FERRET
from fedtune.algorithms.full_ft import FULL_FT
from fedtune.errors import ConfigError

if TYPE_CHECKING:
    from fedtune.config import Config

__all__ = ["REGISTRY", "Algorithm", "resolve", "strategies"]

REGISTRY: dict[str, Algorithm] = {a.name: a for a in (
    FEDIT,
    FEDKSEED,
    FEDKSEED_PRO,
    FERRET,
    FULL_FT,
    LOCAL,
    CENTRALIZED,
)}


def resolve(cfg: Config) -> Algorithm:
    """The algorithm ``cfg`` names, after the compatibility table (:mod:`fedtune.compat`: the
    objective, the strategy, the keys it reads, dp, secagg, the trust policy, the LoRA variant)
    and the algorithm's own checks. Raises ``ConfigError`` with one sentence."""
    name = cfg.train.algorithm
    algo = REGISTRY.get(name)
    if algo is None:
        raise ConfigError(f"algorithm='{name}' is not supported; use one of "
                          f"{', '.join(REGISTRY)}.")
    from fedtune.compat import check

    check(cfg, algo)
    algo.check(cfg)
    return algo
