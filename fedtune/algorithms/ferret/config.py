"""Ferret's config section (``ferret-*`` keys). The local steps use the ``train`` section
(``local-steps``, ``batch-size``, ``grad-accum``, ``lr`` and its schedule over rounds); the
seed-space aggregation options (``zo-equal-weights``, ``zo-server-momentum``,
``zo-robust-clip``) are the ``seeds`` strategy's, shared with FedKSeed."""

from __future__ import annotations

from dataclasses import dataclass

from fedtune.errors import one_of, require
from fedtune.train.sft import OPTIMIZERS


@dataclass
class FerretConfig:
    """Ferret (Shu et al., ICML 2025). Official script (LLaMA-1B, Natural Instructions): K=200,
    40 local batches of 1 with 4 accumulated per SGD step (10 steps), lr 1e-4, server lr 10,
    equal client weights; see ``simulations/recipes/ferret-ni.toml``."""

    ferret_seeds: int = 200  # K: the shared seed pool; each block projects onto up to K of them
    ferret_server_lr: float = 1.0  # eta_s: w <- w - eta_s * mean of the reconstructed updates
    ferret_optimizer: str = "sgd"  # local first-order steps: sgd (the paper's) or adamw
    # A block is a run of consecutive weight tensors; a new one starts once the next tensor
    # would take it past this fraction of the median tensor size (the official code's 0.9).
    ferret_block_ratio: float = 0.9
    ferret_min_seeds: int = 2  # seeds per block at least; the rest by the block's update norm

    def validate(self) -> None:
        require(1 <= self.ferret_seeds <= 4096,
                f"ferret-seeds={self.ferret_seeds} must be in [1, 4096].")
        require(self.ferret_server_lr > 0,
                f"ferret-server-lr={self.ferret_server_lr} must be positive.")
        one_of("ferret-optimizer", self.ferret_optimizer, OPTIMIZERS)
        require(0 < self.ferret_block_ratio,
                f"ferret-block-ratio={self.ferret_block_ratio} must be positive.")
        require(1 <= self.ferret_min_seeds <= self.ferret_seeds,
                f"ferret-min-seeds={self.ferret_min_seeds} must be in [1, ferret-seeds].")
