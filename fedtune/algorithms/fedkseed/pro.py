"""FedKSeed-Pro on the wire: the server's seed importance, sent compactly.

The server keeps exact statistics (``fedtune.seeded.SeedPool``). Clients only need the sampling
probabilities, softmax(min-max-normalised importance); the normalised importance travels as one
byte per seed (K bytes), and clients take the softmax of the dequantised values.
"""

from __future__ import annotations

import numpy as np

from fedtune.seeded import SeedPool


def encode_importance(pool: SeedPool) -> bytes:
    """Min-max-normalised importance quantised to uint8 (all-equal -> all zeros)."""
    imp = pool.importance()
    span = float(imp.max() - imp.min())
    norm = (imp - imp.min()) / span if span > 0 else np.zeros_like(imp)
    return np.round(norm * 255).astype(np.uint8).tobytes()


def probabilities_from(data: bytes, k: int) -> np.ndarray:
    """Sampling probabilities from :func:`encode_importance`'s bytes (float64, sums to 1)."""
    q = np.frombuffer(data, dtype=np.uint8)
    if q.size != k:
        raise ValueError(f"importance has {q.size} entries, expected K={k}")
    e = np.exp(q.astype(np.float64) / 255.0 - 1.0)
    return e / e.sum()
