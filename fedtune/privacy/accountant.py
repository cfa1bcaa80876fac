"""Privacy accounting of fedtune's rounds with Google's ``dp-accounting`` (RDP).

fedtune samples a fixed number m of the N connected clients per round, without replacement,
with its seeded generator, so each round is a sampled-without-replacement Gaussian mechanism
(Wang, Balle and Kasiviswanathan, AISTATS 2019). ``dp-accounting`` supports that sampling
under the *replace-one* neighbouring relation (N is public; neighbouring federations differ in
one client's data, replaced by anything). Replacing one client moves the sum of clipped
contributions by up to 2C, so with noise std z C the accountant is given noise multiplier
z / 2. With m = N (every client every round) the event is the plain Gaussian mechanism, the
same relation, no amplification.
"""

from __future__ import annotations

import copy

import dp_accounting
import numpy as np
from dp_accounting.rdp import RdpAccountant

NEIGHBOURING = "replace-one"
SAMPLING = "fixed-size sampling without replacement"
SENSITIVITY = 2.0  # in units of C: replace-one on a sum of norm-<=C contributions


def round_event(noise_multiplier: float, sample_size: int, population: int
                ) -> dp_accounting.DpEvent:
    """One round's release as a ``dp-accounting`` event."""
    if not 1 <= sample_size <= population:
        raise ValueError(f"sample size {sample_size} must be in [1, population={population}]")
    if noise_multiplier == 0:
        return dp_accounting.NonPrivateDpEvent()
    gaussian = dp_accounting.GaussianDpEvent(noise_multiplier / SENSITIVITY)
    if sample_size == population:
        return gaussian
    return dp_accounting.SampledWithoutReplacementDpEvent(population, sample_size, gaussian)


def rdp_accountant() -> RdpAccountant:
    """An empty RDP accountant under fedtune's neighbouring relation (replace-one): the one
    runs record their rounds in and ``fedtune dp-plan`` composes its rounds in."""
    relation = dp_accounting.privacy_accountant.NeighboringRelation.REPLACE_ONE
    return RdpAccountant(neighboring_relation=relation)


class Accountant:
    """The rounds released so far (a ledger) and their cumulative epsilon at ``delta``.

    The ledger is the state: ``state_dict()`` is an (n, 3) array of (z, m, N) per released
    round, and a resumed run rebuilds exactly the same RDP curve from it.
    """

    def __init__(self, delta: float) -> None:
        if not 0 < delta < 1:
            raise ValueError(f"delta={delta} must be in (0, 1)")
        self.delta = delta
        self.rounds: list[tuple[float, int, int]] = []
        self._rdp = rdp_accountant()

    def epsilon(self) -> float:
        """Cumulative epsilon at ``delta`` (0 before any release, inf without noise)."""
        if not self.rounds:
            return 0.0
        return float(self._rdp.get_epsilon(self.delta))

    def epsilon_after(self, noise_multiplier: float, sample_size: int, population: int
                      ) -> float:
        """The epsilon if one more round (z, m, N) were released; nothing is recorded."""
        trial = copy.deepcopy(self._rdp)
        trial.compose(round_event(noise_multiplier, sample_size, population))
        return float(trial.get_epsilon(self.delta))

    def record(self, noise_multiplier: float, sample_size: int, population: int) -> None:
        """A round was released."""
        self._rdp.compose(round_event(noise_multiplier, sample_size, population))
        self.rounds.append((float(noise_multiplier), int(sample_size), int(population)))

    def state_dict(self) -> dict[str, np.ndarray]:
        return {"ledger": np.asarray(self.rounds, dtype=np.float64).reshape(-1, 3),
                "delta": np.float64(self.delta)}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        if float(state["delta"]) != self.delta:
            raise ValueError(f"the saved accountant used delta={float(state['delta'])}, "
                             f"this run {self.delta}")
        self.rounds, self._rdp = [], rdp_accountant()
        for z, m, n in np.asarray(state["ledger"]).reshape(-1, 3):
            self.record(float(z), int(m), int(n))
