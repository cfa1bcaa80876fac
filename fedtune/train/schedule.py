"""Learning rate across federated rounds (constant within a round, as in OpenFedLLM)."""

from __future__ import annotations

import math


def round_lr(base_lr: float, server_round: int, num_rounds: int, schedule: str,
             min_ratio: float) -> float:
    """Learning rate of ``server_round`` (1-based) out of ``num_rounds``."""
    if schedule == "constant" or num_rounds <= 1:
        return base_lr
    progress = (server_round - 1) / (num_rounds - 1)
    low = base_lr * min_ratio
    if schedule == "cosine":
        return low + 0.5 * (base_lr - low) * (1 + math.cos(math.pi * progress))
    if schedule == "linear":
        return base_lr - (base_lr - low) * progress
    raise ValueError(f"unknown lr schedule '{schedule}'; use constant, cosine or linear")
