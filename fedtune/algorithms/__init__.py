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
    """The algorithm ``cfg`` names, after the checks that depend on it: the objective, the
    strategy (it must aggregate this algorithm's payload) and the algorithm's own checks.
    Raises ``ConfigError`` with one sentence."""
    name, objective = cfg.train.algorithm, cfg.train.objective
    algo = REGISTRY.get(name)
    if algo is None:
        raise ConfigError(f"algorithm='{name}' is not supported; use one of "
                          f"{', '.join(REGISTRY)}.")
    if objective not in algo.objectives:
        able = [a.name for a in REGISTRY.values() if objective in a.objectives]
        raise ConfigError(f"objective={objective} runs with {', '.join(able)}; the {name} "
                          f"{'algorithm' if algo.federated else 'baseline'} supports "
                          f"{', '.join(algo.objectives)} only, so change one of them.")
    if algo.federated:
        from fedtune.strategies import entry

        found = entry(cfg.strategy.strategy, algo.payload, name)
        if found.client_hook and not algo.client_hooks:
            raise ConfigError(f"strategy='{found.name}' needs its client half, which the {name} "
                              f"client does not run; use one of {', '.join(strategies(algo))}.")
    from fedtune.strategies import check_privacy

    check_privacy(cfg, algo.payload, name, algo.federated)
    algo.check(cfg)
    return algo


def strategies(algo: Algorithm) -> list[str]:
    """The strategy names that fit ``algo``."""
    from fedtune.strategies import REGISTRY as STRATEGIES

    return [e.name for (kind, _), e in STRATEGIES.items()
            if kind == algo.payload and (algo.client_hooks or not e.client_hook)]
