"""Ferret's config section (``ferret-*`` keys). The local steps use the ``train`` section
(``local-steps``, ``batch-size``, ``grad-accum``, ``lr-schedule`` over rounds) with their own
learning rate ``ferret-lr`` (0 = for the model size, see :func:`ferret_lr`); the
seed-space aggregation options (``seeds-equal-weights``, ``seeds-server-momentum``,
``seeds-robust-clip``) are the ``seeds`` strategy's, shared with FedKSeed."""

from __future__ import annotations

from dataclasses import dataclass

from fedtune.errors import one_of, require
from fedtune.train.config import OPTIMIZERS, SERVER_LR_SCHEDULES


@dataclass
class FerretConfig:
    """Ferret (Shu et al., ICML 2025). Official script (LLaMA-1B, Natural Instructions): K=200,
    40 local batches of 1 with 4 accumulated per SGD step (10 steps), lr 1e-4, server lr 10,
    equal client weights; see ``simulations/recipes/ferret-ni.toml``."""

    ferret_seeds: int = 200  # K: the shared seed pool; each block projects onto up to K of them
    ferret_lr: float = 0.0  # the local optimizer's lr; 0 = auto: 0.1 on `tiny`, else by size
    ferret_server_lr: float = 1.0  # eta_s: w <- w - eta_s * mean of the reconstructed updates
    # eta_s across rounds (the official --anneal): constant, or linear / cosine towards 0 at
    # round R + 1 (:func:`fedtune.train.schedule.server_lr`)
    ferret_server_lr_schedule: str = "constant"
    ferret_optimizer: str = "sgd"  # local first-order steps: sgd (the paper's) or adamw
    # A block is a run of consecutive weight tensors; a new one starts once the next tensor
    # would take it past this fraction of the median tensor size (the official code's 0.9).
    ferret_block_ratio: float = 0.9
    ferret_min_seeds: int = 2  # seeds per block at least; the rest by the block's update norm

    def validate(self) -> None:
        require(1 <= self.ferret_seeds <= 4096,
                f"ferret-seeds={self.ferret_seeds} must be in [1, 4096].")
        require(self.ferret_lr >= 0, f"ferret-lr={self.ferret_lr} must be >= 0 (0 = auto).")
        require(self.ferret_server_lr > 0,
                f"ferret-server-lr={self.ferret_server_lr} must be positive.")
        one_of("ferret-server-lr-schedule", self.ferret_server_lr_schedule,
               SERVER_LR_SCHEDULES)
        one_of("ferret-optimizer", self.ferret_optimizer, OPTIMIZERS)
        require(0 < self.ferret_block_ratio,
                f"ferret-block-ratio={self.ferret_block_ratio} must be positive.")
        require(1 <= self.ferret_min_seeds <= self.ferret_seeds,
                f"ferret-min-seeds={self.ferret_min_seeds} must be in [1, ferret-seeds].")


def ferret_lr(cfg: FerretConfig, num_params: int, tiny: bool) -> float:
    """The local lr when ``ferret-lr`` is 0. SGD: 0.1 on the random ``tiny`` preset; for a
    pretrained model a power law through 0.02 at 2.6e5 parameters (stories260k on Natural
    Instructions, measured here) and the official script's 1e-4 at 1.3e9 (LLaMA-1B). At 0.05
    (the rule before) a round of 10 SGD steps on one task overshoots: held-out loss went 5.29
    -> 4.44 -> 4.45 -> 4.72, and the exact FedAvg of the same clients' updates rose as much
    (4.69), so the drift was the local step, not Ferret's projection (+0.04 a round); at 0.02
    it went 4.65 -> 4.47 -> 4.46. AdamW: 2e-3 on tiny, else 1e-5."""
    if cfg.ferret_lr > 0:
        return cfg.ferret_lr
    if cfg.ferret_optimizer == "adamw":
        return 2e-3 if tiny else 1e-5
    if tiny:
        return 0.1
    return 0.02 * (num_params / 2.6e5) ** -0.622


SECTION = ("ferret", FerretConfig)  # found by fedtune.config; read by Ferret
