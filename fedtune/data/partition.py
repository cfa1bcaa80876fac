"""Partitioners: deterministic from the run seed."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from fedtune.seeding import rng

T = TypeVar("T")


def iid_partition(items: Sequence[T], num_partitions: int, seed: int) -> list[list[T]]:
    """Shuffle with the run seed, then deal items round-robin into ``num_partitions`` parts."""
    if num_partitions < 1:
        raise ValueError("num_partitions must be at least 1")
    order = rng(seed, "iid").permutation(len(items)).tolist()
    return [[items[i] for i in order[p::num_partitions]] for p in range(num_partitions)]
