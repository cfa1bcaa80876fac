"""The ``secagg`` config section: secure aggregation (SecAgg+) of the clients' updates."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from fedtune.errors import one_of, require


@dataclass
class SecAggConfig:
    """SecAgg+ (Bell et al., CCS 2020): the server learns only the sum of the sampled clients'
    quantised updates, even when some drop out."""

    # secure aggregation: `on` = the server learns only the sum of the sampled clients' updates
    # (SecAgg+)
    secagg: str = "off"
    # k, the clients each client shares its secrets with (even); 0 = auto: all up to 33 clients per
    # round, else ⌈3·log₂ m⌉ rounded up to even
    secagg_neighbours: int = 0
    # shares needed to reconstruct a secret, as a fraction of k, in (0.5, 1]; 0 = auto: ⌊k/2⌋ + 1,
    # the fewest that are safe, which tolerates the most dropouts
    secagg_threshold: float = 0.0
    # R: each value of a client's vector (n × update, n, n × loss) is clipped to ±R before
    # quantising; 0 = auto: 64 for FedIT, 65536 for FedKSeed
    secagg_clip_range: float = 0.0
    secagg_bits: int = 24  # quantisation levels 2^bits; the sum of 2^(32-bits) clients fits

    @property
    def enabled(self) -> bool:
        return self.secagg == "on"

    def validate(self) -> None:
        one_of("secagg", self.secagg, ("off", "on"))
        require(self.secagg_neighbours >= 0 and self.secagg_neighbours % 2 == 0,
                f"secagg-neighbours={self.secagg_neighbours} must be an even number "
                "(0 = auto).")
        require(self.secagg_threshold == 0 or 0.5 < self.secagg_threshold <= 1,
                f"secagg-threshold={self.secagg_threshold} must be in (0.5, 1] (0 = auto): "
                "at half or less, two disjoint groups could unmask a client.")
        require(self.secagg_clip_range >= 0,
                f"secagg-clip-range={self.secagg_clip_range} must be > 0 (0 = auto).")
        require(8 <= self.secagg_bits <= 30,
                f"secagg-bits={self.secagg_bits} must be in [8, 30].")

    def clip_range_for(self, payload: Any) -> float:
        """``secagg-clip-range``, or the default of the algorithm's payload
        (:class:`fedtune.payloads.Payload` ``default_clip_range``)."""
        return self.secagg_clip_range or payload.default_clip_range

    def neighbours_for(self, m: int) -> int:
        """k for m clients: everyone up to 32 clients, else an even k >= 3 log2(m) (SecAgg+)."""
        if self.secagg_neighbours:
            return min(self.secagg_neighbours, m - 1)
        if m <= 33:
            return m - 1
        k = math.ceil(3 * math.log2(m))
        return k + k % 2

    def threshold_for(self, k: int) -> int:
        """Shares that reconstruct a secret: more than half of the k + 1 holders."""
        frac = self.secagg_threshold or 0.5
        return min(k, max(k // 2 + 1, math.ceil(frac * k)))
