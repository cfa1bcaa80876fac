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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fedtune.errors import ConfigError

if TYPE_CHECKING:
    from fedtune.config import Config


@dataclass(frozen=True)
class StrategyEntry:
    name: str
    payload: str  # the update kind it aggregates (an Algorithm's payload)
    module: str  # fedtune.strategies.<module>.build(name, cfg, server) builds it
    reference: str
    client_hook: str = ""  # "<module>:<class>" of the node's half, if any
    per_client: str = ""  # why it needs each client's update ("" = their mean is enough)


_EACH = "it looks at each client's update, not only at their (noised) mean"
_ENTRIES = [
    StrategyEntry("fedavg", "arrays", "flower", "McMahan et al., AISTATS 2017"),
    StrategyEntry("fedprox", "arrays", "flower", "Li et al., MLSys 2020"),
    StrategyEntry("fedavgm", "arrays", "flower", "Hsu et al., 2019"),
    StrategyEntry("fedadam", "arrays", "flower", "Reddi et al., ICLR 2021"),
    StrategyEntry("fedyogi", "arrays", "flower", "Reddi et al., ICLR 2021"),
    StrategyEntry("fedadagrad", "arrays", "flower", "Reddi et al., ICLR 2021"),
    StrategyEntry("fedmedian", "arrays", "flower", "Yin et al., ICML 2018", per_client=_EACH),
    StrategyEntry("fedtrimmedavg", "arrays", "flower", "Yin et al., ICML 2018", per_client=_EACH),
    StrategyEntry("krum", "arrays", "flower", "Blanchard et al., NeurIPS 2017", per_client=_EACH),
    StrategyEntry("scaffold", "arrays", "scaffold", "Karimireddy et al., ICML 2020",
                  client_hook="scaffold:ScaffoldClient",
                  per_client="each client also uploads its control variate, unclipped and without "
                        "noise"),
    # FedKSeed's seed-space FedAvg (options: zo-server-momentum, zo-robust-clip)
    StrategyEntry("fedavg", "seeds", "fedkseed", "Qin et al., ICML 2024"),
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


def build_strategy(cfg: Config, payload: str, server: Any) -> Any:
    """The configured strategy for an algorithm's ``payload``, built over its server side."""
    found = entry(cfg.strategy.strategy, payload, cfg.train.algorithm)
    strategy = _load(found.module).build(found.name, cfg, server)
    if cfg.privacy.enabled:
        from fedtune.strategies.dp import wrap

        strategy = wrap(strategy, cfg, payload, server)
    if cfg.secagg.enabled:
        from fedtune.strategies import secagg

        strategy = secagg.wrap(strategy, cfg, payload, server)
    return strategy


def client_hook(cfg: Config, payload: str) -> Any | None:
    """A fresh instance of the configured strategy's client half, or None."""
    found = entry(cfg.strategy.strategy, payload, cfg.train.algorithm)
    if not found.client_hook:
        return None
    module, _, cls = found.client_hook.partition(":")
    return getattr(_load(module), cls)()


def check_privacy(cfg: Config, payload: str, algorithm: str, federated: bool) -> None:
    """Configs that would break differential privacy or secure aggregation: one sentence."""
    on = [f"{key}='{value}'" for key, value, enabled in (
        ("dp", cfg.privacy.dp, cfg.privacy.enabled), ("secagg", cfg.secagg.secagg,
                                                      cfg.secagg.enabled)) if enabled]
    if not on:
        return
    what = " and ".join(on)
    if cfg.secagg.enabled and cfg.privacy.dp == "server":
        raise ConfigError("dp='server' cannot run with secagg='on': the server cannot clip "
                          "updates it never sees; use dp='client' (each node clips).")
    if not federated:
        raise ConfigError(f"{what} protects federated rounds; the {algorithm} baseline "
                          "has none, so turn it off.")
    found = entry(cfg.strategy.strategy, payload, algorithm)
    if found.per_client:
        fits = [n for n in names_for(payload) if not REGISTRY[(payload, n)].per_client]
        raise ConfigError(f"strategy='{found.name}' cannot run with {what}: "
                          f"{found.per_client}; use one of {', '.join(fits)}.")
    if payload == "seeds" and cfg.zo.zo_robust_clip > 0:
        raise ConfigError(f"zo-robust-clip cannot run with {what}: its bound is the median "
                          "of all clients' scalars, so it needs each client's scalars; set "
                          "zo-robust-clip=0.")
    if cfg.secagg.enabled:
        st = cfg.strategy
        if st.example_weights not in ("auto", "reported") or st.max_update_norm_ratio > 0:
            raise ConfigError("example-weights='capped'/'equal' and max-update-norm-ratio "
                              "cannot run with secagg='on': the server never sees one "
                              "client's count or update; use example-weights='auto' and "
                              "max-update-norm-ratio=0.")
        if cfg.server.min_train_nodes < 2:
            raise ConfigError("secagg='on' needs min-train-nodes >= 2: the sum of one client "
                              "is that client's update.")
    _check_private_outputs(cfg, payload, what)


def _check_private_outputs(cfg: Config, payload: str, what: str) -> None:
    """What would release per-client data in the clear, or break the sensitivity (2C under
    replace-one) the accountant assumes: one sentence each."""
    s, p = cfg.server, cfg.privacy
    if p.enabled and cfg.strategy.max_update_norm_ratio > 0:
        raise ConfigError(f"max-update-norm-ratio cannot run with dp='{p.dp}': its bound is "
                          "the median of all clients' update norms, so replacing one client "
                          "moves every other update and the sum by more than the 2C the "
                          "accountant assumes; set max-update-norm-ratio=0 (dp-clip-norm "
                          "already bounds each client).")
    if p.dp_population > 0:
        p.check_population(p.dp_population, deployed=False)
    if s.fraction_evaluate > 0:
        raise ConfigError(f"federated evaluation (fraction-evaluate={s.fraction_evaluate:g}) "
                          f"cannot run with {what}: each client's held-out loss would reach "
                          "the server in the clear; set fraction-evaluate=0 (the server's "
                          "own held-out eval-loss is still reported every round).")
    if p.enabled and cfg.secagg.enabled and (
            p.clip_norm_for(payload) > cfg.secagg.clip_range_for(payload)):
        raise ConfigError(f"dp-clip-norm={p.clip_norm_for(payload):g} exceeds "
                          f"secagg-clip-range={cfg.secagg.clip_range_for(payload):g}: the "
                          "secure sum would clip values and count them without noise; raise "
                          "secagg-clip-range or lower dp-clip-norm.")
