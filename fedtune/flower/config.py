"""The ``server`` config section: rounds, sampling, timeouts and the run seed (the round loop)."""

from __future__ import annotations

from dataclasses import dataclass

from fedtune.errors import at_least_one, require


@dataclass
class ServerConfig:
    num_server_rounds: int = 0  # 0 = auto: 12 for objective=sft, 20 for objective=dpo
    fraction_train: float = 0.5  # share of nodes sampled per round
    min_train_nodes: int = 2  # fewest nodes per round; a round with fewer valid replies is skipped
    min_available_nodes: int = 2  # wait for this many nodes before round 1 (simulate: all)
    fraction_evaluate: float = 0.25  # share of nodes for federated evaluation (0 = off)
    min_evaluate_nodes: int = 1  # fewest nodes for federated evaluation
    round_timeout: float = 600.0  # seconds to wait for replies before aggregating what arrived
    seed: int = 0  # run seed: sampling, batches, dropout, LoRA init, data

    def validate(self) -> None:
        at_least_one(num_server_rounds=self.num_server_rounds,
                     min_train_nodes=self.min_train_nodes)
        require(0 < self.fraction_train <= 1,
                f"fraction-train={self.fraction_train} must be in (0, 1].")
        require(0 <= self.fraction_evaluate <= 1,
                f"fraction-evaluate={self.fraction_evaluate} must be in [0, 1].")
        require(self.min_available_nodes >= 0 and self.min_evaluate_nodes >= 0,
                f"min-available-nodes={self.min_available_nodes} and min-evaluate-nodes="
                f"{self.min_evaluate_nodes} must be >= 0.")
        require(self.round_timeout > 0,
                f"round-timeout={self.round_timeout} must be positive seconds.")
