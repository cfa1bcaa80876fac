"""Ferret's projection of a local update onto shared random directions, and its reconstruction.

Shu et al., ICML 2025 (Ferret), Sec. 4: a client's local update Delta = w_global - w_local is
split into blocks; block b is projected onto n_b random directions z_k (seed k of the shared
pool, restricted to the block), and only the coefficients

    gamma_bk = <z_k, Delta_b> / (n_b * sigma2),   sigma2 = E[z_e^2]

travel. Every party reconstructs Delta~_b = sum_k gamma_bk z_k from the seeds. Because the
elements of z are independent with mean 0 and variance sigma2, E[z z^T] = sigma2 I, so the
estimator is unbiased: E[Delta~] = Delta for any n_b >= 1 (the paper's unbiasedness; its error
shrinks like d_b / n_b). As in the official code, n_b is proportional to the block's update norm
(the largest block gets K, every block at least ``min_seeds``) and the n_b seeds are drawn
without replacement from the K; here the draw is seeded by (run seed, round, node).

z is :mod:`fedtune.seeded.rng`'s device-independent perturbation (table of normal quantiles), so
reconstruction is bit-identical everywhere; the official code's truncated normal is not.
Delta is streamed from the held version's files (:meth:`VersionStore.version_chunk`) minus
the trained weights, so no second copy of the model is ever held.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from fedtune.seeded.fused import dot_perturbations
from fedtune.seeded.rng import NORMAL_TABLE, perturbations
from fedtune.seeded.versions import VersionStore

SIGMA2 = float(NORMAL_TABLE.double().square().mean())  # E[z_e^2] over the table's lanes


def seeds_per_block(norms: np.ndarray, k: int, min_seeds: int) -> np.ndarray:
    """n_b = floor(||Delta_b|| / max_b ||Delta_b|| * K), clipped to [min_seeds, K]."""
    finite = np.where(np.isfinite(norms), norms, 0.0)
    top = max(float(finite.max()) if finite.size else 0.0, 1e-8)
    return np.clip(np.floor(finite / top * k).astype(np.int64), min_seeds, k)


def _deltas(store: VersionStore, index: int, chunk: int):
    """(start, Delta chunk as float64) over parameter ``index``: held version minus weights."""
    flat = store.params[index].detach().view(-1)
    for start in range(0, flat.numel(), chunk):
        n = min(chunk, flat.numel() - start)
        yield start, (store.version_chunk(index, start, n) - flat[start:start + n]).double()


@torch.no_grad()
def project(store: VersionStore, gen: np.random.Generator, min_seeds: int
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The coefficients of (held version - current weights): (entry indices ``b * K + k`` into
    A, float32 gamma, each block's update norm). Raises ValueError if the update is not
    finite (a diverged local round is refused, never uploaded)."""
    k, blocks = store.seeds.size, store.blocks
    sq = np.zeros(store.num_blocks)
    for index in range(len(store.params)):
        for _, d in _deltas(store, index, store.chunk):
            sq[blocks[index]] += float(d.square().sum())
    norms = np.sqrt(sq)
    if not np.all(np.isfinite(norms)):
        raise ValueError("the local update contains NaN or Inf; lower lr")
    counts = seeds_per_block(norms, k, min_seeds)
    chosen = [np.sort(gen.choice(k, size=int(n), replace=False)) for n in counts]
    dots = [np.zeros(int(n)) for n in counts]
    for index in range(len(store.params)):
        b = int(blocks[index])
        seeds = [int(s) for s in store.seeds[chosen[b]]]
        for start, d in _deltas(store, index, store.chunk):
            dots[b] += dot_perturbations(d, seeds, index, start)
    gammas = [dot / (n * SIGMA2) for dot, n in zip(dots, counts, strict=True)]
    entries = np.concatenate([b * k + c for b, c in enumerate(chosen)])
    return entries.astype(np.int64), np.concatenate(gammas).astype(np.float32), norms


def reconstruct(entries: np.ndarray, gammas: np.ndarray, seeds: Sequence[int],
                blocks: Sequence[int], sizes: Sequence[int]) -> list[torch.Tensor]:
    """The update ``(entries, gammas)`` stands for, sum gamma_bk z_k per block, as float64
    tensors of ``sizes`` elements (the reference the exact versions quantise; for tests)."""
    k = len(seeds)
    out = [torch.zeros(n, dtype=torch.float64) for n in sizes]
    for entry, gamma in zip(np.asarray(entries).tolist(), np.asarray(gammas).tolist(),
                            strict=True):
        b, s = divmod(int(entry), k)
        for index, n in enumerate(sizes):
            if blocks[index] == b:
                out[index] += gamma * perturbations([int(seeds[s])], index, n)[0].double()
    return out
