"""The Gaussian mechanism on a sum of clipped contributions, in float64. The noise comes from
the generator the caller passes: :func:`fedtune.privacy.randomness.privacy_rng`, never the run
seed."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np

T = TypeVar("T")


def l2_norm(vec: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(vec, dtype=np.float64)))


def clip(vec: np.ndarray, bound: float) -> tuple[np.ndarray, float]:
    """(``vec`` scaled to L2 norm <= ``bound`` in float64, its norm before clipping)."""
    vec = np.asarray(vec, dtype=np.float64)
    norm = l2_norm(vec)
    if norm <= bound:
        return vec, norm
    return vec * (bound / norm), norm


def gaussian_noise(size: int, std: float, gen: np.random.Generator) -> np.ndarray:
    """``size`` draws of N(0, std^2) (float64) from ``gen`` (nothing is drawn when std = 0)."""
    if std == 0:
        return np.zeros(size, dtype=np.float64)
    return gen.normal(0.0, std, size)


def noisy_mean(contributions: Sequence[np.ndarray], sample_size: int, bound: float,
               noise_multiplier: float, gen: np.random.Generator
               ) -> tuple[np.ndarray, list[float]]:
    """(sum_i clip(c_i, C) + N(0, (z C)^2 I)) / m, and the norms before clipping.

    ``m`` is the number of clients sampled, not of replies: a client that did not reply counts
    as a zero contribution, so the released sum never depends on who answered, and dividing by
    the public ``m`` is post-processing. Contributions are summed in the given (stable) order.
    """
    if not contributions:
        raise ValueError("no contributions to release")
    size = contributions[0].size
    total = np.zeros(size, dtype=np.float64)
    norms = []
    for vec in contributions:
        clipped, norm = clip(vec, bound)
        total += clipped
        norms.append(norm)
    total += gaussian_noise(size, noise_multiplier * bound, gen)
    return total / sample_size, norms


def shrink_to_bound(build: Callable[[float], T], norm_of: Callable[[T], float], norm: float,
                    bound: float) -> T:
    """The upload ``build(s)`` for the largest tried scale s <= 1 whose contribution, measured
    after the upload's own rounding (e.g. to 16 bits), has norm <= ``bound``.

    Scaling by bound / norm is enough in exact arithmetic; rounding can push the result a hair
    over, so s shrinks until it holds. ``build(0.0)`` must have norm 0 (the unchanged model).
    """
    if norm <= bound:
        return build(1.0)
    scale = bound / norm
    for attempt in range(12):  # shrink by 0.1%, 0.2%, 0.4%, ... until it holds
        out = build(scale)
        if norm_of(out) <= bound:
            return out
        scale *= 1 - min(0.5, 1e-3 * 2**attempt)
    return build(0.0)
