"""The float32 model a process tunes or evaluates with FedKSeed, and its versions.

A version is the accumulated-scalar vector A; its model is the exact integer-sum definition of
:mod:`fedtune.seeded.versions`, held and shared between processes by
:class:`fedtune.seeded.shared.ZOModel` (whose names this module re-exports). Its identity:
model fingerprint, zo-lr, zo-eps, seed pool.

Weights are float32 whatever the device: at eps = 5e-4 a bfloat16 weight cannot even represent
the perturbation (one rounding step at |w| = 0.1), so FedKSeed never tunes in 16 bits.
"""

from __future__ import annotations

import functools
from pathlib import Path

from fedtune.algorithms.fedkseed.config import ZOConfig
from fedtune.algorithms.fedkseed.defaults import zo_eps, zo_lr
from fedtune.config import Config
from fedtune.models.loading import choose_placement, is_tiny, load_model, load_tokenizer
from fedtune.seeded import SeedPool
from fedtune.seeded.params import zo_named_parameters
from fedtune.seeded.shared import (
    KEEP,
    ZOModel,
    identity_mismatch,
    model_fingerprint,
    pool_fingerprint,
    version_key,
)
from fedtune.seeded.versions import VersionStore

__all__ = ["KEEP", "ZOModel", "identity_mismatch", "model_fingerprint", "pool_fingerprint",
           "version_key", "zo_model_for"]


@functools.lru_cache(maxsize=1)
def _cached(model: str, device: str, k: int, seed: int, lr: float, eps: float,
            cache_dir: str) -> ZOModel:
    zo = ZOConfig(zo_lr=lr, zo_eps=eps)
    placement = choose_placement(device, "float32")
    net = load_model(model, placement)
    for p in net.parameters():
        p.requires_grad_(True)  # every weight is tuned; no autograd ever runs
    named = zo_named_parameters(net)
    params = [p for _, p in named]
    n = sum(p.numel() for p in params)
    seeds = SeedPool.from_run_seed(seed, k).seeds
    step_lr, step_eps = zo_lr(zo, n, is_tiny(model)), zo_eps(zo, n)
    store = VersionStore([p.data for p in params], seeds, step_lr,
                         Path(cache_dir) if cache_dir else None)
    identity = {"pool": pool_fingerprint(seeds), "model": model_fingerprint(named, store.w0_digest),
                "zo-lr": repr(step_lr), "zo-eps": repr(step_eps)}
    return ZOModel(model=net, tokenizer=load_tokenizer(model), params=params, seeds=seeds,
                   lr=step_lr, eps=step_eps, store=store, identity=identity)


def zo_model_for(cfg: Config) -> ZOModel:
    """The process's FedKSeed model for this config (loaded once)."""
    return _cached(cfg.model.model, cfg.model.device, cfg.zo.zo_seeds, cfg.server.seed,
                   cfg.zo.zo_lr, cfg.zo.zo_eps, cfg.output.cache_dir)
