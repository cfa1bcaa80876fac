"""Step size and perturbation scale for the model size, when the config leaves them at 0.

The ZO step size must shrink with the parameter count (the estimate's variance grows with it).
Two calibration points: stories260k (2.6e5 parameters) moved well at lr 3e-5 and diverged at
1e-4 (central ZO-SGD on a small synthetic task, batch 8, eps 1e-3: held-out loss 6.80 -> 1.70 in
1,000 steps at 3e-5, 4.58 at 1e-5), and the paper uses 3e-7 at 1.3e9. A power law through both:
lr = 3e-5 * (N / 2.6e5) ** -0.54. The `tiny` preset's random base tolerates more: 1e-4.
"""

from __future__ import annotations

from fedtune.algorithms.fedkseed.config import ZOConfig


def zo_lr(cfg: ZOConfig, num_params: int, tiny: bool) -> float:
    if cfg.zo_lr > 0:
        return cfg.zo_lr
    if tiny:
        return 1e-4
    return 3e-5 * (num_params / 2.6e5) ** -0.54


def zo_eps(cfg: ZOConfig, num_params: int) -> float:
    if cfg.zo_eps > 0:
        return cfg.zo_eps
    return 1e-3 if num_params < 1e8 else 5e-4
