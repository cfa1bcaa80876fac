"""The strategies' config sections: ``strategy`` (the server strategy's name, the parameters of
Flower's strategies, and the trust policy for the clients' weights and updates,
:mod:`fedtune.strategies.trust`) and ``seeds`` (the seed-space strategy's options, for every
algorithm whose payload is seed pairs: FedKSeed, FedKSeed-Pro, Ferret)."""

from __future__ import annotations

from dataclasses import dataclass

from fedtune.errors import one_of, require

#: ``example-weights``: ``auto`` = ``capped`` through a SuperLink (or with ``max-examples`` set),
#: else ``reported`` (the ServerApp decides: :func:`fedtune.strategies.trust.resolve_weights`).
EXAMPLE_WEIGHTS = ("auto", "reported", "capped", "equal")


@dataclass
class StrategySection:
    """Which strategy aggregates the clients' updates (see :mod:`fedtune.strategies`)."""

    # server strategy; must fit the algorithm: FedIT takes `fedavg`, `fedprox`, `fedavgm`,
    # `fedadam`, `fedyogi`, `fedadagrad`, `fedmedian`, `fedtrimmedavg`, `krum`, `scaffold` (see
    # Server strategies); `full-ft` the same but `scaffold` (its client does not run SCAFFOLD's
    # client half); FedKSeed, FedKSeed-Pro and Ferret take `fedavg` (the seed-space aggregation,
    # with the `seeds-equal-weights`, `seeds-server-momentum` and `seeds-robust-clip` options)
    strategy: str = "fedavg"
    server_lr: float = 0.0  # 0: 1.0 for fedavgm, 1e-3 for fedadam/fedyogi/fedadagrad
    server_momentum: float = 0.9  # fedavgm
    # `fedadam`/`fedyogi` first-moment decay
    beta_1: float = 0.9
    # `fedadam`/`fedyogi` second-moment decay
    beta_2: float = 0.99
    tau: float = 1e-3  # fedadam, fedyogi, fedadagrad: adaptivity
    prox_mu: float = 0.01  # fedprox: weight of the proximal term
    trim_beta: float = 0.2  # fedtrimmedavg: fraction cut at each end
    krum_malicious: int = 1  # krum: number of malicious clients to tolerate
    # Trust policy (applied by the round loop before any strategy sees the replies), the clients'
    # weights: reported (as each client says), capped (at most max-examples, or max-examples-ratio x
    # the round's median report), equal; auto = capped through a SuperLink, reported in simulation
    example_weights: str = "auto"
    max_examples: int = 0  # capped: each client's weight <= this; 0 = a multiple of the median
    max_examples_ratio: float = 3.0  # capped, max-examples=0: <= ratio x the round's median
    # > 0: a reply whose update norm (of what moves the model, per payload: see the trust policy)
    # exceeds ratio x the round's median update norm is scaled down to that bound and logged by
    # name; 0 = off
    max_update_norm_ratio: float = 0.0

    def validate(self) -> None:
        # the name is checked against the algorithm by fedtune.algorithms.resolve
        require(self.server_lr >= 0 and self.tau > 0 and self.prox_mu >= 0,
                "server-lr and prox-mu must be >= 0 and tau > 0.")
        require(0 <= self.trim_beta < 0.5, f"trim-beta={self.trim_beta} must be in [0, 0.5).")
        require(0 <= self.server_momentum < 1 and 0 <= self.beta_1 < 1 and 0 <= self.beta_2 < 1,
                "server-momentum, beta-1 and beta-2 must be in [0, 1).")
        require(self.krum_malicious >= 0, f"krum-malicious={self.krum_malicious} must be >= 0.")
        one_of("example-weights", self.example_weights, EXAMPLE_WEIGHTS)
        require(self.max_examples >= 0,
                f"max-examples={self.max_examples} must be >= 0 (0: use max-examples-ratio).")
        require(self.max_examples_ratio >= 1,
                f"max-examples-ratio={self.max_examples_ratio} must be at least 1 (a cap "
                "below the median would cut honest clients).")
        require(self.max_update_norm_ratio == 0 or self.max_update_norm_ratio >= 1,
                f"max-update-norm-ratio={self.max_update_norm_ratio} must be 0 (off) or at "
                "least 1 (a bound below the median would cut honest clients).")
        require(self.example_weights in ("auto", "capped") or self.max_examples == 0,
                f"max-examples={self.max_examples} applies to example-weights='capped', not "
                f"'{self.example_weights}'; set example-weights='capped' or max-examples=0.")


@dataclass
class SeedsSection:
    """The ``seeds`` strategy (:mod:`fedtune.strategies.seeds`): FedAvg over (seed, scalar)
    pairs, with options."""

    seeds_equal_weights: bool = False  # aggregate clients equally instead of by examples
    seeds_server_momentum: float = 0.0  # server momentum on the round's change of A (0 = off)
    # Robust aggregation: clip every scalar of the round to +-(factor x the median |g| over all
    # clients' scalars) before adding; bounds what one scaled-up client can do (0 = off).
    seeds_robust_clip: float = 0.0

    def validate(self) -> None:
        require(0 <= self.seeds_server_momentum < 1,
                f"seeds-server-momentum={self.seeds_server_momentum} must be in [0, 1).")
        require(self.seeds_robust_clip >= 0,
                f"seeds-robust-clip={self.seeds_robust_clip} must be >= 0 (0 = off).")


#: found by fedtune.config; a strategy entry names the section it reads (``section``)
SECTIONS = {"strategy": StrategySection, "seeds": SeedsSection}
