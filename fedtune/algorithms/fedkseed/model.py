"""The float32 model a process tunes or evaluates with FedKSeed, and its versions.

A version is the accumulated-scalar vector A; the model of a version is *defined* as the
canonical replay ``w0 - lr * sum_s A_s z(s)`` (``fedtune.zo.replay_``), so every party that
holds A holds the same weights, bit for bit on the same device type. A process keeps w0 and
one replayed version: virtual clients on one simulation worker share it, and a client's own
steps are undone by copying the version back, never by subtracting them.

Weights are float32 whatever the device: at eps = 5e-4 a bfloat16 weight cannot even
represent the perturbation (one rounding step at |w| = 0.1), so FedKSeed never tunes in 16 bits.
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from fedtune.algorithms.fedkseed.config import ZOConfig
from fedtune.algorithms.fedkseed.defaults import zo_eps, zo_lr
from fedtune.config import Config
from fedtune.models.loading import choose_placement, is_tiny, load_model, load_tokenizer
from fedtune.zo import SeedPool, float32_snapshot, replay_, zo_parameters


def version_key(accumulated: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(accumulated, dtype=np.float32).tobytes()).hexdigest()


def pool_fingerprint(seeds: np.ndarray) -> int:
    """A 63-bit identity of the seed pool, sent with every round so a misconfigured client
    (other run seed or K) fails loudly instead of training along the wrong directions."""
    digest = hashlib.sha256(np.ascontiguousarray(seeds, dtype=np.uint64).tobytes()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@dataclass
class ZOModel:
    model: torch.nn.Module
    tokenizer: object
    params: list[torch.Tensor]
    w0: list[torch.Tensor]
    seeds: np.ndarray
    lr: float
    eps: float
    version: str | None = None
    _snapshot: list[torch.Tensor] = field(default_factory=list)

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.params)

    def load(self, accumulated: np.ndarray, cache_dir: str | Path | None = None) -> str:
        """Set the weights to the model of version ``accumulated``; returns its key.

        Sources, cheapest first: this process's copy of the version; ``cache_dir``, where any
        party that replayed the version left it; the canonical replay (then written there).
        Every source holds the canonical replay's exact bits.
        """
        key = version_key(accumulated)
        if key != self.version:
            path = self._cache_path(cache_dir, key)
            if path is not None and path.exists():
                tensors = load_file(path, device=str(self.params[0].device))
                self._snapshot = [tensors[str(i)] for i in range(len(self.params))]
            else:
                replay_(self.params, self.w0, np.asarray(accumulated, dtype=np.float32),
                        self.seeds, self.lr)
                self._snapshot = [p.detach().clone() for p in self.params]
                if path is not None:
                    _write_atomic(path, self._snapshot)
            self.version = key
        with torch.no_grad():
            for p, s in zip(self.params, self._snapshot, strict=True):
                p.copy_(s)
        return key

    def _cache_path(self, cache_dir: str | Path | None, key: str) -> Path | None:
        if not cache_dir:
            return None
        return Path(cache_dir) / f"{pool_fingerprint(self.seeds):x}-{key[:32]}.safetensors"

    def checksum(self) -> str:
        """sha256 of the current weights (to check that parties agree bit for bit)."""
        h = hashlib.sha256()
        for p in self.params:
            h.update(p.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()


def _write_atomic(path: Path, tensors: list[torch.Tensor], keep: int = 3) -> None:
    """Write then rename (readers never see a partial file); keep the newest ``keep``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file({str(i): t.detach().cpu().contiguous() for i, t in enumerate(tensors)}, tmp)
    os.replace(tmp, path)
    old = sorted(path.parent.glob("*.safetensors"), key=lambda p: p.stat().st_mtime)[:-keep]
    for stale in old:
        stale.unlink(missing_ok=True)


@functools.lru_cache(maxsize=1)
def _cached(model: str, device: str, k: int, seed: int, lr: float, eps: float) -> ZOModel:
    zo = ZOConfig(zo_lr=lr, zo_eps=eps)
    placement = choose_placement(device, "float32")
    net = load_model(model, placement)
    for p in net.parameters():
        p.requires_grad_(True)  # every weight is tuned; no autograd ever runs
    params = zo_parameters(net)
    n = sum(p.numel() for p in params)
    return ZOModel(
        model=net, tokenizer=load_tokenizer(model), params=params,
        w0=float32_snapshot(params, device=placement.device),
        seeds=SeedPool.from_run_seed(seed, k).seeds,
        lr=zo_lr(zo, n, is_tiny(model)), eps=zo_eps(zo, n),
    )


def zo_model_for(cfg: Config) -> ZOModel:
    """The process's FedKSeed model for this config (loaded once)."""
    return _cached(cfg.model.model, cfg.model.device, cfg.zo.zo_seeds, cfg.server.seed,
                   cfg.zo.zo_lr, cfg.zo.zo_eps)
