"""What fits with what: the one table of rules between settings, checked before any engine.

Each :class:`Rule` names the two settings it relates and, when a config breaks it, returns one
sentence that says what to use instead. :func:`check` runs :data:`RULES` in order and raises
:class:`Incompatible` (a :class:`~fedtune.errors.ConfigError`) with the first broken rule;
:func:`fedtune.algorithms.resolve` calls it once the algorithm is known. A rule reads what the
registries declare (an algorithm's payload, objectives and client hooks, a strategy's client
half, ``per_client``, ``reads`` and ``section``, a LoRA variant's fields, the sections an
algorithm reads: :func:`key_readers`) and never compares
algorithm names in code: the few algorithm-specific rows are data (:data:`NO_PRIVACY`,
:data:`NO_DP_WITH_SECAGG`). A section's own checks (one key's range) stay in the section.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

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


# ---- FedIT's LoRA variants (fedtune.algorithms.fedit.variants) -----------------------------
def _variant(cfg: Config, algo: Algorithm):
    """The run's LoRA variant and whether its ranks are mixed, or None (no lora-aggregation)."""
    if algo.name not in key_readers()["lora-aggregation"]:
        return None
    from fedtune.algorithms.fedit.variants import variant

    lora = cfg.lora
    return variant(cfg), any(r != lora.lora_r for r in lora.ranks())


def _ranks(cfg: Config, algo: Algorithm) -> str:
    found = _variant(cfg, algo)
    if found is None:
        return ""
    (v, mixed), lora = found, cfg.lora
    if mixed and not v.mixed_ranks:
        return (f"lora-aggregation='{v.name}' needs one rank for every client, but lora-ranks="
                f"'{lora.lora_ranks}' mixes them; use fedit (zero padding) or flora for mixed "
                "ranks, or drop lora-ranks.")
    if mixed and v.pads_ranks and max(lora.ranks()) > lora.lora_r:
        return (f"lora-ranks='{lora.lora_ranks}' has a rank above lora-r={lora.lora_r}, the "
                f"global adapter's rank that {v.name} pads to; raise lora-r to the largest "
                "rank.")
    if mixed and cfg.train.init_adapter:
        return ("lora-ranks cannot start from init-adapter, whose rank is fixed; drop one of "
                "them.")
    return ""


def _restart_init(cfg: Config, algo: Algorithm) -> str:
    found, how = _variant(cfg, algo), cfg.lora.lora_restart_init
    if found is None or how == "shared":
        return ""
    from fedtune.algorithms.fedit.variants import VARIANTS

    v = found[0]
    if not v.restarts:
        restarting = [r.name for r in VARIANTS.values() if r.restarts]
        return (f"lora-restart-init='{how}' applies to an adapter that restarts every round, "
                f"but lora-aggregation='{v.name}' keeps its adapter; set lora-aggregation="
                f"'{restarting[0]}' or drop lora-restart-init.")
    if cfg.train.init_adapter:
        return (f"lora-restart-init='{how}' draws a new adapter for every client and round, so "
                "init-adapter's adapter would never be used; drop one of them.")
    return ""


def _variant_strategy(cfg: Config, algo: Algorithm) -> str:
    found = _variant(cfg, algo)
    if found is None:
        return ""
    (v, mixed), name = found, cfg.strategy.strategy
    key = f"lora-aggregation='{v.name}'"
    if v.strategies and name not in v.strategies:
        return (f"strategy='{name}' does not fit {key}: its aggregate is the exact product of "
                "each client's factors, which an averaging strategy cannot form; use one of "
                f"{', '.join(v.strategies)}.")
    from fedtune.algorithms.fedit.variants import VARIANTS
    from fedtune.strategies import entry

    if not entry(name, algo.payload, algo.name).client_hook:
        return ""  # only a strategy's client half needs the whole adapter on every client
    if mixed:
        return (f"strategy='{name}' needs every client to train the whole global adapter, "
                f"which lora-ranks='{cfg.lora.lora_ranks}' (mixed ranks) does not; use "
                "another strategy or drop lora-ranks.")
    if not v.trains_whole_adapter:
        whole = [w.name for w in VARIANTS.values() if w.trains_whole_adapter]
        return (f"strategy='{name}' needs every client to train the whole global adapter, "
                f"which {key} does not; use another strategy or lora-aggregation="
                f"'{whole[0]}'.")
    return ""


def _variant_private(cfg: Config, algo: Algorithm) -> str:
    found = _variant(cfg, algo)
    private = [k for k, on in (("dp", cfg.privacy.enabled), ("secagg", cfg.secagg.enabled))
               if on]
    if found is None or not private:
        return ""
    v, mixed = found
    if not (v.merges or mixed):
        return ""
    what = f"lora-aggregation='{v.name}'" if v.merges else "mixed lora-ranks"
    return (f"{what} cannot run with {' and '.join(private)}: it needs each client's own "
            "factors, not only their sum; use fedit, ffa or fedsa with one rank.")


# ---- FedIT's PEFT methods and LoRA options (fedtune.algorithms.fedit.methods) --------------
def _reads_adapter(algo: Algorithm) -> bool:
    return "lora" in algo.sections


def _method_keys(cfg: Config, algo: Algorithm) -> str:
    """A lora-section key set for a ``peft-method`` that does not read it."""
    if not _reads_adapter(algo):
        return ""
    from fedtune.algorithms.fedit.methods import COMMON, METHODS

    name = cfg.lora.peft_method
    for key in changed_keys(cfg, "lora"):
        if key in COMMON or key in METHODS[name].reads:
            continue
        able = [m.name for m in METHODS.values() if key in m.reads]
        return (f"{key} is not read by peft-method='{name}', which would ignore it; drop {key} "
                f"or use peft-method {', '.join(able)}.")
    return ""


def _method_init_adapter(cfg: Config, algo: Algorithm) -> str:
    lora = cfg.lora
    if not (_reads_adapter(algo) and cfg.train.init_adapter):
        return ""
    for key, value, default in (("peft-method", lora.peft_method, "lora"),
                                ("lora-init", lora.lora_init, "default")):
        if value != default:
            return (f"{key}='{value}' cannot start from init-adapter, whose folder brings its own "
                    f"method and initialisation; drop {key} or init-adapter.")
    return ""


def _dora_variant(cfg: Config, algo: Algorithm) -> str:
    found = _variant(cfg, algo)
    if found is None or not cfg.lora.lora_use_dora:
        return ""
    v = found[0]
    if not (v.merges or v.frozen):
        return ""
    return (f"lora-use-dora cannot run with lora-aggregation='{v.name}': DoRA rescales each "
            f"column by a trained magnitude, so a client's change is not the s B A that "
            f"{v.name} {'merges' if v.merges else 'measures'}; use lora-aggregation 'fedit' or "
            "'fedsa'.")


def _lora_init(cfg: Config, algo: Algorithm) -> str:
    found, how = _variant(cfg, algo), cfg.lora.lora_init
    if found is None or how == "default":
        return ""
    from fedtune.algorithms.fedit.methods import REWRITES_BASE

    (v, mixed), key = found, f"lora-init='{how}'"
    if how in REWRITES_BASE and v.restarts:
        return (f"{key} cannot run with lora-aggregation='{v.name}': it restarts every round "
                "from an adapter whose product it counts as zero, but this initialisation's "
                "product is not zero; use fedit, ffa, fedsa or fedex.")
    if v.restarts and cfg.lora.lora_restart_init == "fresh":
        return (f"{key} cannot run with lora-restart-init='fresh', which draws peft's default "
                "initialisation for every client and round; drop one of them.")
    if how in REWRITES_BASE and mixed:
        return (f"{key} rewrites the base weights for one rank, so lora-ranks cannot mix ranks; "
                "drop lora-ranks or lora-init.")
    return ""


# ---- quantization (fedtune.models.quantize) --------------------------------------------------
def _quantized(cfg: Config) -> str:
    """``"quantization='nf4'"``, or "" for an unquantised base."""
    q = cfg.model.quantization
    return "" if q == "none" else f"quantization='{q}'"


def _quantized_algorithm(cfg: Config, algo: Algorithm) -> str:
    what = _quantized(cfg)
    if not what or "lora" in algo.sections:
        return ""
    from fedtune.algorithms import REGISTRY

    able = [a.name for a in REGISTRY.values() if "lora" in a.sections]
    return (f"{what} quantises the frozen base under a PEFT adapter, but {algo.name} perturbs or "
            "trains every base weight, which 4- or 8-bit weights cannot take in small steps; "
            f"use one of the algorithms {', '.join(able)}, or quantization='none'.")


def _quantized_variant(cfg: Config, algo: Algorithm) -> str:
    found, what = _variant(cfg, algo), _quantized(cfg)
    if found is None or not what or not found[0].merges:
        return ""
    from fedtune.algorithms.fedit.variants import VARIANTS

    keep = [v.name for v in VARIANTS.values() if not v.merges]
    return (f"lora-aggregation='{found[0].name}' writes each round's merged change into the "
            f"base weights, which {what} stores quantised; use one of lora-aggregation "
            f"{', '.join(keep)}, or quantization='none'.")


def _quantized_method(cfg: Config, algo: Algorithm) -> str:
    what = _quantized(cfg)
    if not what or "lora" not in algo.sections:
        return ""
    from fedtune.models.quantize import QUANTIZED_METHODS, method_fits

    q, lora = cfg.model.quantization, cfg.lora
    method = getattr(lora, "peft_method", "lora")
    if not method_fits(method, q):
        return (f"peft-method='{method}' cannot train on a base quantised as {q}: its peft "
                "layers read the base weight tensor itself, which bitsandbytes stores packed or "
                "without its "
                f"scales; use one of the peft-methods {', '.join(sorted(QUANTIZED_METHODS))}, or "
                "quantization='none'.")
    if getattr(lora, "lora_use_dora", False) and q == "int8":
        return ("lora-use-dora cannot run with quantization='int8': peft's DoRA does not "
                "support 8-bit layers; use quantization nf4 or fp4, or drop lora-use-dora.")
    init = getattr(lora, "lora_init", "default")
    if init in ("pissa", "olora"):
        return (f"lora-init='{init}' rewrites the base weights into a residual W - s B A, which "
                f"{what} would hold re-quantised and export could not merge into the "
                "full-precision base; use lora-init default or gaussian, or quantization='none'.")
    return ""


#: The table, in the order its rules are checked (the first broken one is reported).
RULES: list[Rule] = [
    Rule(("algorithm", "objective"), _objective),
    Rule(("algorithm", "strategy"), _strategy),
    Rule(("strategy", "algorithm"), _client_half),
    Rule(("init-adapter", "algorithm"), _init_adapter),
    Rule(("<another algorithm's key>", "algorithm"), _foreign),
    Rule(("<another strategy's parameter>", "strategy"), _foreign_strategy_key),
    Rule(("<a lora-section key>", "peft-method"), _method_keys),
    Rule(("peft-method/lora-init", "init-adapter"), _method_init_adapter),
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
    Rule(("lora-aggregation", "lora-ranks"), _ranks),
    Rule(("lora-restart-init", "lora-aggregation/init-adapter"), _restart_init),
    Rule(("lora-aggregation", "strategy"), _variant_strategy),
    Rule(("lora-aggregation", "dp/secagg"), _variant_private),
    Rule(("lora-use-dora", "lora-aggregation"), _dora_variant),
    Rule(("lora-init", "lora-aggregation/lora-ranks"), _lora_init),
    # ---- quantization
    Rule(("quantization", "algorithm"), _quantized_algorithm),
    Rule(("quantization", "lora-aggregation"), _quantized_variant),
    Rule(("quantization", "peft-method/lora-use-dora/lora-init"), _quantized_method),
]


def check(cfg: Config, algo: Algorithm) -> None:
    """Raise :class:`Incompatible` with the first rule ``cfg`` breaks with ``algo``."""
    for rule in RULES:
        message = rule.test(cfg, algo)
        if message:
            raise Incompatible(message, rule)
