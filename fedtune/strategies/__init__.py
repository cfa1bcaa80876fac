"""Server strategies: one file per strategy fedtune writes, Flower's own through one adapter,
and the registry that names them.

A strategy fits the algorithms whose ``payload`` it aggregates: ``arrays`` (FedIT's LoRA
adapters: Flower's strategies and SCAFFOLD) or ``seeds`` (FedKSeed's seed-scalar pairs).
Every strategy exposes ``state_dict()``/``load_state_dict()`` for checkpoints; one with a client
half (SCAFFOLD) names its hook here. The registry is import-light: a strategy's module (which
imports Flower) is loaded only when the strategy is built.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fedtune.errors import ConfigError

if TYPE_CHECKING:
    from fedtune.algorithms.base import Algorithm
    from fedtune.config import Config


@dataclass(frozen=True)
class StrategyEntry:
    name: str
    payload: str  # the update kind it aggregates (an Algorithm's payload)
    module: str  # fedtune.strategies.<module>.build(name, cfg, server) builds it
    reference: str
    client_hook: str = ""  # "<module>:<class>" of the node's half, if any
    per_client: str = ""  # why it needs each client's update ("" = their mean is enough)
    #: the ``strategy`` section's parameters it reads (another strategy refuses them set)
    reads: tuple[str, ...] = ()
    section: str = ""  # its own config section, if any (fedtune.strategies.config.SECTIONS)


_EACH = "it looks at each client's update, not only at their (noised) mean"
_FEDOPT = ("server-lr", "beta-1", "beta-2", "tau")
_ENTRIES = [
    StrategyEntry("fedavg", "arrays", "builtin", "McMahan et al., AISTATS 2017"),
    StrategyEntry("fedprox", "arrays", "builtin", "Li et al., MLSys 2020", reads=("prox-mu",)),
    StrategyEntry("fedavgm", "arrays", "builtin", "Hsu et al., 2019",
                  reads=("server-lr", "server-momentum")),
    StrategyEntry("fedadam", "arrays", "builtin", "Reddi et al., ICLR 2021", reads=_FEDOPT),
    StrategyEntry("fedyogi", "arrays", "builtin", "Reddi et al., ICLR 2021", reads=_FEDOPT),
    StrategyEntry("fedadagrad", "arrays", "builtin", "Reddi et al., ICLR 2021",
                  reads=("server-lr", "tau")),
    StrategyEntry("fedmedian", "arrays", "builtin", "Yin et al., ICML 2018", per_client=_EACH),
    StrategyEntry("fedtrimmedavg", "arrays", "builtin", "Yin et al., ICML 2018", per_client=_EACH,
                  reads=("trim-beta",)),
    StrategyEntry("krum", "arrays", "builtin", "Blanchard et al., NeurIPS 2017", per_client=_EACH,
                  reads=("krum-malicious",)),
    StrategyEntry("scaffold", "arrays", "scaffold", "Karimireddy et al., ICML 2020",
                  client_hook="scaffold:ScaffoldClient",
                  per_client="each client also uploads its control variate, unclipped and without "
                        "noise"),
    # FedKSeed's seed-space FedAvg, for every seeds algorithm (its options: the seeds section)
    StrategyEntry("fedavg", "seeds", "seeds", "Qin et al., ICML 2024", section="seeds"),
]
REGISTRY: dict[tuple[str, str], StrategyEntry] = {(e.payload, e.name): e for e in _ENTRIES}


def names_for(payload: str) -> list[str]:
    """The strategy names that aggregate ``payload`` updates, in registry order."""
    return [name for (kind, name) in REGISTRY if kind == payload]


def entry(name: str, payload: str, algorithm: str = "") -> StrategyEntry:
    """The entry for ``strategy=name`` with a ``payload`` algorithm, or a one-sentence error."""
    found = REGISTRY.get((payload, name))
    if found is None:
        fits = ", ".join(names_for(payload))
        known = {n for _, n in REGISTRY}
        what = "does not fit" if name in known else "is unknown for"
        raise ConfigError(f"strategy='{name}' {what} algorithm '{algorithm or payload}'; "
                          f"use one of {fits}.")
    return found


def _load(module: str) -> Any:
    return importlib.import_module(module if "." in module else f"fedtune.strategies.{module}")


def _trust_active(cfg: Config) -> bool:
    from fedtune.strategies.trust import active

    return active(cfg.strategy)


#: The strategy chain, innermost first: the configured strategy, then each wrapper whose setting
#: is on. The trust policy reads each client's reply, so it sits inside differential privacy
#: (which releases only a noised sum) and secure aggregation, outermost, which alone sees the
#: masked replies. (module, whether the run needs it)
CHAIN: list[tuple[str, Callable[[Config], bool]]] = [
    ("trust", _trust_active),
    ("dp", lambda cfg: cfg.privacy.enabled),
    ("secagg", lambda cfg: cfg.secagg.enabled),
]


def build_strategy(cfg: Config, payload: str, server: Any) -> Any:
    """The configured strategy for an algorithm's ``payload`` kind (the registry's key), built
    over its server side, inside the wrappers of :data:`CHAIN` that the run turns on."""
    found = entry(cfg.strategy.strategy, payload, cfg.train.algorithm)
    strategy = _load(found.module).build(found.name, cfg, server)
    for module, needed in CHAIN:
        if needed(cfg):
            strategy = _load(module).wrap(strategy, cfg, server)
    return strategy


def fitting(algo: Algorithm) -> list[str]:
    """The strategy names that fit ``algo``."""
    return [e.name for (kind, _), e in REGISTRY.items()
            if kind == algo.payload and (algo.client_hooks or not e.client_hook)]


def client_hook(cfg: Config, payload: str) -> Any | None:
    """A fresh instance of the configured strategy's client half, or None."""
    found = entry(cfg.strategy.strategy, payload, cfg.train.algorithm)
    if not found.client_hook:
        return None
    module, _, cls = found.client_hook.partition(":")
    return getattr(_load(module), cls)()


def check_privacy(cfg: Config, algorithm: Algorithm) -> None:
    """Configs that would break differential privacy or secure aggregation: one sentence. The
    rules are the compatibility table's (:mod:`fedtune.compat`) that name dp or secagg."""
    from fedtune.compat import RULES, Incompatible

    for rule in RULES:
        if any("dp" in s or "secagg" in s for s in rule.settings):
            message = rule.test(cfg, algorithm)
            if message:
                raise Incompatible(message, rule)
