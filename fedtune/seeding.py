"""Every random choice is seeded by (run seed, round, node): never by Flower's node id."""

from __future__ import annotations

import hashlib

import numpy as np


def derive_seed(*parts: int | str) -> int:
    """A stable 63-bit seed from any tuple of ints/strings, the same in every process."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def rng(*parts: int | str) -> np.random.Generator:
    return np.random.default_rng(derive_seed(*parts))
