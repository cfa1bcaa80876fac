"""What fits with what: the one table of rules between settings, checked before any engine.

Each :class:`Rule` names the two settings it relates and, when a config breaks it, returns one
sentence that says what to use instead. :func:`check` runs :data:`RULES` in order and raises
:class:`Incompatible` (a :class:`~fedtune.errors.ConfigError`) with the first broken rule;
:func:`fedtune.algorithms.resolve` calls it once the algorithm is known. A rule reads what the
registries declare (an algorithm's payload, objectives and client hooks, a strategy's client
half, ``per_client``, ``reads`` and ``section``, a LoRA variant's fields, the sections an
algorithm reads: :func:`key_readers`) and never compares
algorithm names in code: the few algorithm-specific rows are data (:data:`NO_PRIVACY`,
:data:`NO_DP_WITH_SECAGG`). A section's own checks (one key's range) stay in the section. The rows
of FedIT's adapter (LoRA variants, PEFT methods, quantised bases) live in
:mod:`fedtune.compat_adapter`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fedtune.compat_adapter import (
    dora_variant,
    lora_init,
    method_init_adapter,
    method_keys,
    quantized_algorithm,
    quantized_method,
    quantized_variant,
    ranks,
    restart_init,
    variant_private,
    variant_strategy,
)
from fedtune.errors import ConfigError
from fedtune.key_readers import changed_keys, foreign_keys, key_readers, strategy_key_readers

if TYPE_CHECKING:
    from fedtune.algorithms.base import Algorithm
    from fedtune.config import Config

__all__ = ["RULES", "Incompatible", "Rule", "check", "foreign_keys", "key_readers",
           "strategy_key_readers"]


class Incompatible(ConfigError):
    """A config that breaks a rule of the table (``rule``); the message is one sentence."""

    def __init__(self, message: str, rule: Rule) -> None:
        super().__init__(message)
        self.rule = rule


@dataclass(frozen=True)
class Rule:
    settings: tuple[str, str]  # the two settings it relates (for the docs and the tests)
    test: Callable[[Config, Algorithm], str]  # "" = fine, else the one-sentence refusal


def _key(name: str) -> str:
    return name.replace("_", "-")


#: algorithms whose payload DP and SecAgg do not cover yet, and why
NO_PRIVACY = {"ferret": "its clipping and noise are defined for FedKSeed's scalars, not "
                        "projection coefficients"}
#: algorithms that cannot run dp and secagg together, and why
NO_DP_WITH_SECAGG = {"fedkseed-pro": "the seeds' statistics would be summed securely but "
                                     "released without noise"}


def _private(cfg: Config) -> str:
    """``"dp='client' and secagg='on'"``, as much of it as is on ("" if neither)."""
    return " and ".join(f"{key}='{value}'" for key, value, on in (
        ("dp", cfg.privacy.dp, cfg.privacy.enabled),
        ("secagg", cfg.secagg.secagg, cfg.secagg.enabled)) if on)


# ---- the algorithm and its strategy --------------------------------------------------------
def _objective(cfg: Config, algo: Algorithm) -> str:
    from fedtune.algorithms import REGISTRY

    objective = cfg.train.objective
    if objective in algo.objectives:
        return ""
    able = [a.name for a in REGISTRY.values() if objective in a.objectives]
    return (f"objective={objective} runs with {', '.join(able)}; the {algo.name} "
            f"{'algorithm' if algo.federated else 'baseline'} supports "
            f"{', '.join(algo.objectives)} only, so change one of them.")


def _strategy(cfg: Config, algo: Algorithm) -> str:
    from fedtune.strategies import entry

    if not algo.federated:
        return ""
    try:
        entry(cfg.strategy.strategy, algo.payload, algo.name)
    except ConfigError as err:
        return str(err)
    return ""


def _client_half(cfg: Config, algo: Algorithm) -> str:
    from fedtune.strategies import entry, fitting

    if not algo.federated or algo.client_hooks:
        return ""
    found = entry(cfg.strategy.strategy, algo.payload, algo.name)
    if not found.client_hook:
        return ""
    return (f"strategy='{found.name}' needs its client half, which the {algo.name} client "
            f"does not run; use one of {', '.join(fitting(algo))}.")


def _init_adapter(cfg: Config, algo: Algorithm) -> str:
    if not cfg.train.init_adapter or "lora" in algo.sections:
        return ""
    return (f"init-adapter starts a FedIT (LoRA) run; {algo.name} tunes full weights, so pass "
            "a materialized model as model=runs/<run>/model instead.")


def _foreign(cfg: Config, algo: Algorithm) -> str:
    keys = foreign_keys(cfg, algo.name)
    if not keys:
        return ""
    key = keys[0]
    return (f"{key} is read by {', '.join(key_readers()[key])} only, not by algorithm="
            f"'{algo.name}', which would ignore it; drop {key} or use one of those algorithms.")


def _foreign_strategy_key(cfg: Config, algo: Algorithm) -> str:
    if not algo.federated:
        return ""
    name, readers = cfg.strategy.strategy, strategy_key_readers()
    for key in changed_keys(cfg, "strategy"):
        if key in readers and name not in readers[key]:
            return (f"{key} is a parameter of strategy {', '.join(readers[key])}, not of "
                    f"strategy='{name}', which would ignore it; drop {key} or use that "
                    "strategy.")
    return ""


# ---- privacy: dp and secagg (see fedtune.privacy and fedtune.secagg) ----------------------
def _server_dp_secagg(cfg: Config, algo: Algorithm) -> str:
    if cfg.secagg.enabled and cfg.privacy.dp == "server":
        return ("dp='server' cannot run with secagg='on': the server cannot clip updates it "
                "never sees; use dp='client' (each node clips).")
    return ""


def _baseline(cfg: Config, algo: Algorithm) -> str:
    what = _private(cfg)
    if what and not algo.federated:
        return (f"{what} protects federated rounds; the {algo.name} baseline has none, so "
                "turn it off.")
    return ""


def _per_client(cfg: Config, algo: Algorithm) -> str:
    from fedtune.strategies import REGISTRY, entry, names_for

    what = _private(cfg)
    if not what:
        return ""
    found = entry(cfg.strategy.strategy, algo.payload, algo.name)
    if not found.per_client:
        return ""
    fits = [n for n in names_for(algo.payload) if not REGISTRY[(algo.payload, n)].per_client]
    return (f"strategy='{found.name}' cannot run with {what}: {found.per_client}; use one of "
            f"{', '.join(fits)}.")


def _robust_clip(cfg: Config, algo: Algorithm) -> str:
    what = _private(cfg)
    if what and cfg.seeds.seeds_robust_clip > 0:  # (only seeds algorithms read it)
        return (f"seeds-robust-clip cannot run with {what}: its bound is the median of all "
                "clients' scalars, so it needs each client's scalars; set seeds-robust-clip=0.")
    return ""


def _secagg_trust(cfg: Config, algo: Algorithm) -> str:
    st = cfg.strategy
    if cfg.secagg.enabled and (st.example_weights not in ("auto", "reported")
                               or st.max_update_norm_ratio > 0):
        return ("example-weights='capped'/'equal' and max-update-norm-ratio cannot run with "
                "secagg='on': the server never sees one client's count or update; use "
                "example-weights='auto' and max-update-norm-ratio=0.")
    return ""


def _secagg_nodes(cfg: Config, algo: Algorithm) -> str:
    if cfg.secagg.enabled and cfg.server.min_train_nodes < 2:
        return ("secagg='on' needs min-train-nodes >= 2: the sum of one client is that "
                "client's update.")
    return ""


def _dp_norm_ratio(cfg: Config, algo: Algorithm) -> str:
    p = cfg.privacy
    if p.enabled and cfg.strategy.max_update_norm_ratio > 0:
        return (f"max-update-norm-ratio cannot run with dp='{p.dp}': its bound is the median "
                "of all clients' update norms, so replacing one client moves every other "
                "update and the sum by more than the 2C the accountant assumes; set "
                "max-update-norm-ratio=0 (dp-clip-norm already bounds each client).")
    return ""


def _dp_population(cfg: Config, algo: Algorithm) -> str:
    p = cfg.privacy
    if _private(cfg) and p.dp_population > 0:
        try:
            p.check_population(p.dp_population, deployed=False)
        except ConfigError as err:
            return str(err)
    return ""


def _federated_eval(cfg: Config, algo: Algorithm) -> str:
    what, s = _private(cfg), cfg.server
    if what and s.fraction_evaluate > 0:
        return (f"federated evaluation (fraction-evaluate={s.fraction_evaluate:g}) cannot run "
                f"with {what}: each client's held-out loss would reach the server in the "
                "clear and their mean would be released without noise; set fraction-evaluate=0 "
                "(the server's own held-out eval-loss is still reported every round).")
    return ""


def _clip_range(cfg: Config, algo: Algorithm) -> str:
    from fedtune.payloads import KINDS

    p, payload = cfg.privacy, KINDS[algo.payload]
    if p.enabled and cfg.secagg.enabled and (
            p.clip_norm_for(payload) > cfg.secagg.clip_range_for(payload)):
        return (f"dp-clip-norm={p.clip_norm_for(payload):g} exceeds secagg-clip-range="
                f"{cfg.secagg.clip_range_for(payload):g}: the secure sum would clip values and "
                "count them without noise; raise secagg-clip-range or lower dp-clip-norm.")
    return ""


def _no_privacy(cfg: Config, algo: Algorithm) -> str:
    why = NO_PRIVACY.get(algo.name)
    if why and _private(cfg):
        return (f"{algo.name} does not run with dp or secagg yet ({why}); use fedkseed or "
                "fedit with them.")
    return ""


def _no_dp_with_secagg(cfg: Config, algo: Algorithm) -> str:
    why = NO_DP_WITH_SECAGG.get(algo.name)
    if why and cfg.privacy.enabled and cfg.secagg.enabled:
        return (f"{algo.name} cannot run with both dp and secagg: {why}; use fedkseed, or one "
                "of the two.")
    return ""


#: The table, in the order its rules are checked (the first broken one is reported).
RULES: list[Rule] = [
    Rule(("algorithm", "objective"), _objective),
    Rule(("algorithm", "strategy"), _strategy),
    Rule(("strategy", "algorithm"), _client_half),
    Rule(("init-adapter", "algorithm"), _init_adapter),
    Rule(("<another algorithm's key>", "algorithm"), _foreign),
    Rule(("<another strategy's parameter>", "strategy"), _foreign_strategy_key),
    Rule(("<a lora-section key>", "peft-method"), method_keys),
    Rule(("peft-method/lora-init", "init-adapter"), method_init_adapter),
    Rule(("dp", "secagg"), _server_dp_secagg),
    Rule(("dp/secagg", "algorithm"), _baseline),
    Rule(("strategy", "dp/secagg"), _per_client),
    Rule(("seeds-robust-clip", "dp/secagg"), _robust_clip),
    Rule(("example-weights/max-update-norm-ratio", "secagg"), _secagg_trust),
    Rule(("min-train-nodes", "secagg"), _secagg_nodes),
    Rule(("max-update-norm-ratio", "dp"), _dp_norm_ratio),
    Rule(("dp-delta", "dp-population"), _dp_population),
    Rule(("fraction-evaluate", "dp/secagg"), _federated_eval),
    Rule(("dp-clip-norm", "secagg-clip-range"), _clip_range),
    Rule(("algorithm", "dp/secagg"), _no_privacy),
    Rule(("algorithm", "dp+secagg"), _no_dp_with_secagg),
    Rule(("lora-aggregation", "lora-ranks"), ranks),
    Rule(("lora-restart-init", "lora-aggregation/init-adapter"), restart_init),
    Rule(("lora-aggregation", "strategy"), variant_strategy),
    Rule(("lora-aggregation", "dp/secagg"), variant_private),
    Rule(("lora-use-dora", "lora-aggregation"), dora_variant),
    Rule(("lora-init", "lora-aggregation/lora-ranks"), lora_init),
    # ---- quantization
    Rule(("quantization", "algorithm"), quantized_algorithm),
    Rule(("quantization", "lora-aggregation"), quantized_variant),
    Rule(("quantization", "peft-method/lora-use-dora/lora-init"), quantized_method),
]


def check(cfg: Config, algo: Algorithm) -> None:
    """Raise :class:`Incompatible` with the first rule ``cfg`` breaks with ``algo``."""
    for rule in RULES:
        message = rule.test(cfg, algo)
        if message:
            raise Incompatible(message, rule)
