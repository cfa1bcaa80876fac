"""The seed pool of FedKSeed and FedKSeed-Pro's importance sampling (Qin et al., ICML 2024).

A run fixes K candidate seeds. Each ZO step draws one, uniformly (FedKSeed) or with probabilities
from the seeds' importance (FedKSeed-Pro): importance = mean |clipped scalar| over the seed's
history, min-max normalised, then softmax (the wire form and the probabilities are in
``fedtune.algorithms.fedkseed.pro``). The (seed index, scalar) pairs a client uploads are
packed here into little-endian bytes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedtune.seeded.rng import _mix64

__all__ = [
    "PRO_CLIP",
    "SeedPool",
    "accumulate_",
    "derive_seeds",
    "pack_pairs",
    "sample_seed_indices",
    "unpack_pairs",
]

PRO_CLIP = 1000.0
"""Scalars are clipped to +-PRO_CLIP before entering a seed's importance (official code)."""

_GOLDEN = 0x9E3779B97F4A7C15


def derive_seeds(run_seed: int, k: int) -> np.ndarray:
    """K distinct seeds in [1, 2**63) from ``run_seed``, as int64.

    The SplitMix64 sequence of ``run_seed`` in exact Python integers: the same on every machine
    and with every numpy version (a numpy Generator's streams may change between releases).
    """
    if k < 1:
        raise ValueError(f"the seed pool needs K >= 1 seeds, got K={k}")
    seeds: list[int] = []
    seen: set[int] = set()
    state = run_seed & ((1 << 64) - 1)
    while len(seeds) < k:
        state = (state + _GOLDEN) & ((1 << 64) - 1)
        s = _mix64(state) >> 1
        if s and s not in seen:
            seen.add(s)
            seeds.append(s)
    return np.array(seeds, dtype=np.int64)


def _check_k(k: int) -> None:
    if not 1 <= k <= 1 << 32:
        raise ValueError(f"K must be between 1 and 2**32, got K={k}")


def sample_seed_indices(
    k: int, n: int, rng: np.random.Generator, probabilities: np.ndarray | None = None
) -> np.ndarray:
    """``n`` seed indices in [0, K), uniform or with ``probabilities`` (FedKSeed-Pro), as int64.

    ``rng`` comes from the caller, seeded by (run seed, round, node), so draws are reproducible.
    """
    _check_k(k)
    if probabilities is None:
        return rng.integers(0, k, size=n, dtype=np.int64)
    p = np.asarray(probabilities, dtype=np.float64)
    if p.shape != (k,) or not np.all(np.isfinite(p)) or np.any(p < 0) or p.sum() <= 0:
        raise ValueError(
            f"seed probabilities must be K={k} finite non-negative numbers with a positive sum, "
            f"got shape {p.shape}"
        )
    return rng.choice(k, size=n, p=p / p.sum()).astype(np.int64)


def _validate_pairs(seed_indices: np.ndarray, scalars: np.ndarray, k: int) -> None:
    if seed_indices.ndim != 1 or seed_indices.shape != scalars.shape:
        raise ValueError(
            f"seed indices and scalars must be 1-D arrays of equal length, got shapes "
            f"{seed_indices.shape} and {scalars.shape}"
        )
    if seed_indices.size and (seed_indices.min() < 0 or seed_indices.max() >= k):
        raise ValueError(
            f"seed indices must lie in [0, {k}), got values from {seed_indices.min()} to "
            f"{seed_indices.max()}"
        )
    if not np.all(np.isfinite(scalars)):
        raise ValueError("scalars must be finite; got NaN or Inf")


class SeedPool:
    """K seeds plus FedKSeed-Pro's per-seed statistics, all plain numpy arrays.

    ``abs_sums[s]`` (float64) is the sum of ``|clip(g, -PRO_CLIP, PRO_CLIP)|`` over every scalar
    recorded for seed s and ``counts[s]`` (int64) their number. As in the official code, every
    history starts with one 0.0 entry, so importance is ``abs_sums / (counts + 1)``: a seed never
    drawn (count 0) has importance exactly 0.0, and the first records are damped toward 0.
    """

    def __init__(self, seeds: np.ndarray | Sequence[int], clip: float = PRO_CLIP) -> None:
        self.seeds = np.asarray(seeds, dtype=np.int64)
        _check_k(self.seeds.size)
        if self.seeds.ndim != 1 or np.unique(self.seeds).size != self.seeds.size:
            raise ValueError("the seed pool must be a 1-D array of distinct seeds")
        self.clip = float(clip)
        self.abs_sums = np.zeros(self.k, dtype=np.float64)
        self.counts = np.zeros(self.k, dtype=np.int64)

    @classmethod
    def from_run_seed(cls, run_seed: int, k: int, clip: float = PRO_CLIP) -> SeedPool:
        """The pool of :func:`derive_seeds` (run_seed, k)."""
        return cls(derive_seeds(run_seed, k), clip)

    @property
    def k(self) -> int:
        return int(self.seeds.size)

    def update(self, seed_indices: np.ndarray | Sequence[int], scalars: np.ndarray) -> None:
        """Record the scalars a client uploaded for these seed indices."""
        idx = np.asarray(seed_indices, dtype=np.int64)
        vals = np.asarray(scalars, dtype=np.float64)
        _validate_pairs(idx, vals, self.k)
        np.add.at(self.abs_sums, idx, np.abs(np.clip(vals, -self.clip, self.clip)))
        np.add.at(self.counts, idx, 1)

    def importance(self) -> np.ndarray:
        """Mean |clipped scalar| per seed, the leading 0.0 of each history included (float64)."""
        return self.abs_sums / (self.counts + 1)

    def state_dict(self) -> dict[str, np.ndarray]:
        return {
            "seeds": self.seeds.copy(),
            "abs_sums": self.abs_sums.copy(),
            "counts": self.counts.copy(),
            "clip": np.array(self.clip),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, np.ndarray]) -> SeedPool:
        pool = cls(state["seeds"], float(state["clip"]))
        for name in ("abs_sums", "counts"):
            value = np.asarray(state[name])
            if value.shape != (pool.k,):
                raise ValueError(
                    f"pool state '{name}' has shape {value.shape}, expected ({pool.k},)"
                )
        pool.abs_sums = np.asarray(state["abs_sums"], dtype=np.float64).copy()
        pool.counts = np.asarray(state["counts"], dtype=np.int64).copy()
        return pool


def accumulate_(
    accumulated: np.ndarray, seed_indices: np.ndarray, scalars: np.ndarray, weight: float
) -> None:
    """``A[s] += weight * (sum of one client's scalars for seed s)``, in place on float32 ``A``.

    With ``weight`` = the client's share of the round's examples, calling this for every reply
    (in a stable order) makes the replayed model the example-weighted FedAvg of the clients'
    deltas. The per-client sum is taken in float64, then added to A once in float32.
    """
    if accumulated.dtype != np.float32 or accumulated.ndim != 1:
        raise ValueError(
            f"A must be a 1-D float32 array, got {accumulated.dtype} {accumulated.shape}"
        )
    idx = np.asarray(seed_indices, dtype=np.int64)
    vals = np.asarray(scalars, dtype=np.float64)
    _validate_pairs(idx, vals, accumulated.size)
    per_seed = np.bincount(idx, weights=vals, minlength=accumulated.size) * float(weight)
    touched = np.unique(idx)
    accumulated[touched] += per_seed[touched].astype(np.float32)


def _index_dtype(k: int) -> np.dtype:
    _check_k(k)
    return np.dtype("<u2") if k <= 1 << 16 else np.dtype("<u4")


def pack_pairs(seed_indices: np.ndarray | Sequence[int], scalars: np.ndarray, k: int) -> bytes:
    """n (seed index, scalar) pairs as bytes: n indices (uint16 if K <= 65536, else uint32),
    then n float32 scalars, little-endian. 200 pairs with K = 4096 take 1,200 bytes."""
    idx = np.asarray(seed_indices, dtype=np.int64)
    vals = np.asarray(scalars, dtype=np.float32)
    _validate_pairs(idx, vals, k)
    return idx.astype(_index_dtype(k)).tobytes() + vals.astype("<f4").tobytes()


def unpack_pairs(data: bytes, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`pack_pairs`: (int64 seed indices, float32 scalars); ValueError if the
    length, an index or a scalar is invalid."""
    itype = _index_dtype(k)
    width = itype.itemsize + 4
    if len(data) % width:
        raise ValueError(
            f"packed seed/scalar pairs must be a multiple of {width} bytes for K={k}, "
            f"got {len(data)} bytes"
        )
    n = len(data) // width
    idx = np.frombuffer(data, dtype=itype, count=n).astype(np.int64)
    vals = np.frombuffer(data, dtype="<f4", count=n, offset=n * itype.itemsize).astype(np.float32)
    _validate_pairs(idx, vals, k)
    return idx, vals
