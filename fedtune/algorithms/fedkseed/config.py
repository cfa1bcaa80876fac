"""FedKSeed's config section (``zo-*`` keys); 0 means "pick for the model size"
(see :mod:`fedtune.algorithms.fedkseed.defaults`). The seed-space aggregation's options are the
``seeds`` strategy's section (``seeds-*``, :mod:`fedtune.strategies.config`)."""

from __future__ import annotations

from dataclasses import dataclass

from fedtune.errors import require

MAX_ZO_SEEDS = 7576
"""The largest K the exact versions take (:func:`fedtune.seeded.versions.max_seeds`: K seeds
with |A| < 2**20 at 2**-16 and |zcode| <= 17,715 keep the integer sums inside int64); kept
here as a number so that reading a config imports no torch (a test pins it to the store's)."""


@dataclass
class ZOConfig:
    """FedKSeed (Qin et al., ICML 2024). Paper defaults: K=4096, tau=200, eps=5e-4, lr=3e-7
    for 1.3B parameters."""

    zo_seeds: int = 4096  # K, the fixed seed pool (at most 7,576: the exact versions' sums)
    zo_steps: int = 200  # tau, ZO steps per client per round (batch: batch-size)
    # FedKSeed: constant learning rate; 0 = chosen from the model size
    zo_lr: float = 0.0
    # FedKSeed: perturbation scale; 0 = chosen from the model size
    zo_eps: float = 0.0
    # FedKSeed: skip a step whose |g| exceeds this; a skipped step is not uploaded (official
    # `grad_clip` = 2·eps·`zo-clip`); 0 = never
    zo_clip: float = 0.0
    save_full_model: bool = False  # FedKSeed: also write the replayed model as an HF folder

    def validate(self) -> None:
        require(1 <= self.zo_seeds <= MAX_ZO_SEEDS,
                f"zo-seeds={self.zo_seeds} must be in [1, {MAX_ZO_SEEDS}]: larger seed pools "
                "could overflow the exact model versions' integer sums.")
        require(self.zo_steps >= 1, f"zo-steps={self.zo_steps} must be at least 1.")
        require(self.zo_lr >= 0 and self.zo_eps >= 0 and self.zo_clip >= 0,
                "zo-lr, zo-eps and zo-clip must be >= 0 (0 = auto / off).")


SECTION = ("zo", ZOConfig)  # found by fedtune.config; read by the algorithms that list "zo"
