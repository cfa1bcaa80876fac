"""The ``privacy`` config section (``dp-*`` keys): user-level central differential privacy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fedtune.errors import one_of, require

PLACEMENTS = ("off", "server", "client")


@dataclass
class PrivacyConfig:
    """Central DP with fixed clipping (see :mod:`fedtune.privacy`).

    ``dp``: ``server`` clips each reply on the server; ``client`` clips on the node before
    upload, so the server never sees an unclipped update (it still enforces the bound).
    """

    # differential privacy: `off`, `server` (the server clips each reply), `client` (each node clips
    # before upload)
    dp: str = "off"
    # z: Gaussian noise with std z × `dp-clip-norm` on every coordinate of the round's sum
    dp_noise_multiplier: float = 1.0
    # C, the L2 bound of one client's contribution per round; 0 = auto: 1.0 for adapter updates
    # (FedIT, full-ft), 100.0 for FedKSeed's per-seed sums
    dp_clip_norm: float = 0.0
    dp_delta: float = 0.0  # the delta epsilon is reported at; 0 = auto: 0.1 / dp-population
    # N, the number of clients that may ever take part: delta's default 0.1 / N and the check
    # delta < 1 / N. 0 = auto: the number of virtual clients in simulation (--num-clients);
    # a deployed ServerApp (real SuperNodes) with dp on requires it.
    dp_population: int = 0
    # privacy budget: a round that would take epsilon past it is not run, and the run ends cleanly
    # (0 = no budget)
    dp_max_epsilon: float = 0.0

    @property
    def enabled(self) -> bool:
        return self.dp != "off"

    def validate(self) -> None:
        one_of("dp", self.dp, PLACEMENTS)
        require(self.dp_noise_multiplier >= 0,
                f"dp-noise-multiplier={self.dp_noise_multiplier} must be >= 0.")
        require(self.dp_clip_norm >= 0,
                f"dp-clip-norm={self.dp_clip_norm} must be > 0 (or 0 = auto).")
        require(0 <= self.dp_delta < 1, f"dp-delta={self.dp_delta} must be in [0, 1).")
        require(self.dp_population >= 0,
                f"dp-population={self.dp_population} must be >= 0 (0 = auto).")
        require(self.dp_max_epsilon >= 0,
                f"dp-max-epsilon={self.dp_max_epsilon} must be >= 0 (0 = no budget).")
        require(not (self.enabled and self.dp_max_epsilon > 0
                     and self.dp_noise_multiplier == 0),
                "dp-max-epsilon needs dp-noise-multiplier > 0: without noise every round "
                "costs an unbounded epsilon.")

    def clip_norm_for(self, payload: Any) -> float:
        """``dp-clip-norm``, or the default of the algorithm's payload
        (:class:`fedtune.payloads.Payload` ``default_clip_norm``)."""
        return self.dp_clip_norm or payload.default_clip_norm

    def population(self, fallback: int) -> int:
        """N: ``dp-population``, or ``fallback`` (the simulation's number of clients)."""
        return self.dp_population or max(1, fallback)

    def delta_for(self, population: int) -> float:
        """``dp-delta``, or the default rule 0.1 / N (N = :meth:`population`)."""
        return self.dp_delta or 0.1 / max(1, population)

    def check_population(self, population: int, deployed: bool) -> None:
        """One sentence if delta is not below 1/N, or if a deployment with dp on does not say
        N (``min-available-nodes`` is how many nodes a run waits for, not how many exist)."""
        if not self.enabled:
            return
        require(self.dp_population > 0 or not deployed,
                f"dp='{self.dp}' through a SuperLink needs dp-population=<N>, the number of "
                "nodes that may ever take part (delta defaults to 0.1/N and must stay below "
                "1/N).")
        delta = self.delta_for(population)
        require(delta < 1 / population,
                f"dp-delta={delta:g} must be below 1/N = 1/{population} (N = dp-population, or "
                "the number of clients in simulation): at delta >= 1/N the mechanism may "
                "release one client's data outright; lower dp-delta or set it to 0 (auto: "
                "0.1/N).")
