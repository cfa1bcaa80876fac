"""Learning rates across federated rounds: the clients' local lr (constant within a round, as
in OpenFedLLM) and a server lr annealed as in Ferret's official code."""

from __future__ import annotations

import math

from fedtune.train.config import SERVER_LR_SCHEDULES

#: Server lr schedules (Ferret's ``--anneal``: no, linear, cosine in allen4747/Ferret main.py).


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


def server_lr(base_lr: float, server_round: int, num_rounds: int, schedule: str) -> float:
    """The server lr of ``server_round`` (1-based) out of ``num_rounds``, the official Ferret
    code's formulas with its ``slr_min`` = 0: linear base (1 - (r-1)/R), cosine
    base (1 + cos(pi (r-1)/R)) / 2; round 1 gets ``base_lr``, round R base/R (linear)."""
    progress = (server_round - 1) / max(num_rounds, 1)
    if schedule == "constant":
        return base_lr
    if schedule == "linear":
        return base_lr * (1 - progress)
    if schedule == "cosine":
        return base_lr * 0.5 * (1 + math.cos(math.pi * progress))
    raise ValueError(f"unknown server lr schedule '{schedule}'; use "
                     f"{', '.join(SERVER_LR_SCHEDULES)}")
