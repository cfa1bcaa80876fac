"""The float32 model a process tunes or evaluates with Ferret, at exact versions.

A version is A, one accumulated coefficient per (block, seed); its model is
w = w0 - eta_s * sum_bk A_bk z_k|_b, defined exactly by :mod:`fedtune.seeded.versions` (integer
sums, blocks, a 2**-24 quantum: Ferret's coefficients are small) and held, shared through the
cache folder and caught up incrementally by :class:`fedtune.seeded.shared.ZOModel`, as FedKSeed's.
A client holds the float32 weights and, while it trains, their gradients: w0 and S are files.
"""

from __future__ import annotations

import functools
from pathlib import Path

from fedtune.algorithms.ferret.blocks import blocks_fingerprint, group_blocks
from fedtune.config import Config
from fedtune.models.loading import choose_placement, load_model, load_tokenizer
from fedtune.seeded import SeedPool
from fedtune.seeded.params import zo_named_parameters
from fedtune.seeded.shared import ZOModel, model_fingerprint, pool_fingerprint
from fedtune.seeded.versions import VersionStore

FRAC_BITS = 24  # A's quantum 2**-24; |A| < 4096 (checked on every load)


@functools.lru_cache(maxsize=1)
def _cached(model: str, device: str, k: int, seed: int, server_lr: float, ratio: float,
            cache_dir: str) -> ZOModel:
    net = load_model(model, choose_placement(device, "float32"))
    for p in net.parameters():
        p.requires_grad_(True)  # every weight is tuned
    named = zo_named_parameters(net)
    params = [p for _, p in named]
    blocks = group_blocks([p.numel() for p in params], ratio)
    seeds = SeedPool.from_run_seed(seed, k).seeds
    store = VersionStore([p.data for p in params], seeds, server_lr,
                         Path(cache_dir) if cache_dir else None, blocks=blocks,
                         frac_bits=FRAC_BITS)
    identity = {"pool": pool_fingerprint(seeds), "model": model_fingerprint(named, store.w0_digest),
                "ferret-server-lr": repr(float(server_lr)), "blocks": blocks_fingerprint(blocks)}
    return ZOModel(model=net, tokenizer=load_tokenizer(model), params=params, seeds=seeds,
                   lr=server_lr, eps=0.0, store=store, identity=identity)


def ferret_model_for(cfg: Config) -> ZOModel:
    """The process's Ferret model for this config (loaded once)."""
    f = cfg.ferret
    return _cached(cfg.model.model, cfg.model.device, f.ferret_seeds, cfg.server.seed,
                   f.ferret_server_lr, f.ferret_block_ratio, cfg.output.cache_dir)
