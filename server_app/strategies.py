"""Flower strategies for fedtune's algorithms.

fedtune's round loop does the sampling, so every strategy is built with fraction 1.0 over the
nodes fedtune hands it (see ``fedtune.flower.loop.SampledGrid``).
"""

from __future__ import annotations

from flwr.serverapp.strategy import FedAvg, Strategy

from fedtune.config import Config


def fedit_strategy(cfg: Config) -> Strategy:
    """FedIT: FedAvg (McMahan et al., 2017) of LoRA adapters weighted by local examples."""
    del cfg  # FedAvg has no tunable parameters here; other strategies will read cfg
    return FedAvg(fraction_train=1.0, fraction_evaluate=1.0, min_train_nodes=1,
                  min_evaluate_nodes=1, min_available_nodes=1, weighted_by_key="num-examples")
