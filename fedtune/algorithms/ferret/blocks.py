"""Ferret's parameter blocks: runs of consecutive weight tensors of similar total size.

Each block has its own coefficient per seed, so reconstructing one coefficient touches one block
only (block-wise reconstruction, Shu et al., ICML 2025, Sec. 4). As in the official code, tensors
are taken in order and a block is closed when the next tensor would take it past
``ratio`` x the median tensor size; a tensor larger than that is a block of its own.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np


def group_blocks(sizes: Sequence[int], ratio: float = 0.9) -> list[int]:
    """The block id (0, 1, ...) of each tensor, given the tensors' element counts in order."""
    if not sizes:
        return []
    target = int(ratio * float(np.median(np.asarray(sizes, dtype=np.float64))))
    ids, block, filled = [], 0, 0
    for n in sizes:
        if filled and filled + n > target:
            block, filled = block + 1, 0
        ids.append(block)
        filled += n
    return ids


def blocks_fingerprint(blocks: Sequence[int]) -> str:
    """A short identity of a block layout (sent with every round; clients refuse a mismatch)."""
    return hashlib.sha256(np.asarray(blocks, dtype="<i8").tobytes()).hexdigest()[:16]
