"""The compatibility table's rows for FedIT's adapter (:mod:`fedtune.compat` holds the table and
checks it): the LoRA aggregation variants, the PEFT methods and LoRA options, and quantised
bases. Each returns "" or the one-sentence refusal, as every rule does."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedtune.key_readers import changed_keys, key_readers

if TYPE_CHECKING:
    from fedtune.algorithms.base import Algorithm
    from fedtune.config import Config

# ---- FedIT's LoRA variants (fedtune.algorithms.fedit.variants) -----------------------------
def _variant(cfg: Config, algo: Algorithm):
    """The run's LoRA variant and whether its ranks are mixed, or None (no lora-aggregation)."""
    if algo.name not in key_readers()["lora-aggregation"]:
        return None
    from fedtune.algorithms.fedit.variants import variant

    lora = cfg.lora
    return variant(cfg), any(r != lora.lora_r for r in lora.ranks())


def ranks(cfg: Config, algo: Algorithm) -> str:
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


def restart_init(cfg: Config, algo: Algorithm) -> str:
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


def variant_strategy(cfg: Config, algo: Algorithm) -> str:
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


def variant_private(cfg: Config, algo: Algorithm) -> str:
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


def method_keys(cfg: Config, algo: Algorithm) -> str:
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


def method_init_adapter(cfg: Config, algo: Algorithm) -> str:
    lora = cfg.lora
    if not (_reads_adapter(algo) and cfg.train.init_adapter):
        return ""
    for key, value, default in (("peft-method", lora.peft_method, "lora"),
                                ("lora-init", lora.lora_init, "default")):
        if value != default:
            return (f"{key}='{value}' cannot start from init-adapter, whose folder brings its own "
                    f"method and initialisation; drop {key} or init-adapter.")
    return ""


def dora_variant(cfg: Config, algo: Algorithm) -> str:
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


def lora_init(cfg: Config, algo: Algorithm) -> str:
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


def quantized_algorithm(cfg: Config, algo: Algorithm) -> str:
    what = _quantized(cfg)
    if not what or "lora" in algo.sections:
        return ""
    from fedtune.algorithms import REGISTRY

    able = [a.name for a in REGISTRY.values() if "lora" in a.sections]
    return (f"{what} quantises the frozen base under a PEFT adapter, but {algo.name} perturbs or "
            "trains every base weight, which 4- or 8-bit weights cannot take in small steps; "
            f"use one of the algorithms {', '.join(able)}, or quantization='none'.")


def quantized_variant(cfg: Config, algo: Algorithm) -> str:
    found, what = _variant(cfg, algo), _quantized(cfg)
    if found is None or not what or not found[0].merges:
        return ""
    from fedtune.algorithms.fedit.variants import VARIANTS

    keep = [v.name for v in VARIANTS.values() if not v.merges]
    return (f"lora-aggregation='{found[0].name}' writes each round's merged change into the "
            f"base weights, which {what} stores quantised; use one of lora-aggregation "
            f"{', '.join(keep)}, or quantization='none'.")


def quantized_method(cfg: Config, algo: Algorithm) -> str:
    what = _quantized(cfg)
    if not what or "lora" not in algo.sections:
        return ""
    from fedtune.algorithms.fedit.methods import REWRITES_BASE
    from fedtune.models.quantize import QUANTIZED_METHODS, method_fits

    q, lora = cfg.model.quantization, cfg.lora
    method = lora.peft_method
    if not method_fits(method, q):
        return (f"peft-method='{method}' cannot train on a base quantised as {q}: its peft "
                "layers read the base weight tensor itself, which bitsandbytes stores packed or "
                "without its "
                f"scales; use one of the peft-methods {', '.join(sorted(QUANTIZED_METHODS))}, or "
                "quantization='none'.")
    if lora.lora_use_dora and q == "int8":
        return ("lora-use-dora cannot run with quantization='int8': peft's DoRA does not "
                "support 8-bit layers; use quantization nf4 or fp4, or drop lora-use-dora.")
    init = lora.lora_init
    if init in REWRITES_BASE:
        return (f"lora-init='{init}' rewrites the base weights into a residual W - s B A, which "
                f"{what} would hold re-quantised and export could not merge into the "
                "full-precision base; use lora-init default or gaussian, or quantization='none'.")
    return ""
