"""The ``strategy`` config section: the server strategy's name and its parameters."""

from __future__ import annotations

from dataclasses import dataclass

from fedtune.errors import require


@dataclass
class StrategySection:
    """Which strategy aggregates the clients' updates (see :mod:`fedtune.strategies`)."""

    strategy: str = "fedavg"
    server_lr: float = 0.0  # 0: 1.0 for fedavgm, 1e-3 for fedadam/fedyogi/fedadagrad
    server_momentum: float = 0.9  # fedavgm
    beta_1: float = 0.9  # fedadam, fedyogi
    beta_2: float = 0.99  # fedadam, fedyogi
    tau: float = 1e-3  # fedadam, fedyogi, fedadagrad: adaptivity
    prox_mu: float = 0.01  # fedprox: weight of the proximal term
    trim_beta: float = 0.2  # fedtrimmedavg: fraction cut at each end
    krum_malicious: int = 1  # krum: number of malicious clients to tolerate

    def validate(self) -> None:
        # the name is checked against the algorithm by fedtune.algorithms.resolve
        require(self.server_lr >= 0 and self.tau > 0 and self.prox_mu >= 0,
                "server-lr and prox-mu must be >= 0 and tau > 0.")
        require(0 <= self.trim_beta < 0.5, f"trim-beta={self.trim_beta} must be in [0, 0.5).")
        require(0 <= self.server_momentum < 1 and 0 <= self.beta_1 < 1 and 0 <= self.beta_2 < 1,
                "server-momentum, beta-1 and beta-2 must be in [0, 1).")
        require(self.krum_malicious >= 0, f"krum-malicious={self.krum_malicious} must be >= 0.")
