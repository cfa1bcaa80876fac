"""Plan a DP run before starting it: the epsilon of R rounds of (z, m, N), or the smallest noise
multiplier z whose epsilon stays within a target, with the accountant runs use
(:mod:`fedtune.privacy.accountant`: RDP, replace-one, m of N sampled without replacement).

``fedtune dp-plan`` prints these; delta defaults to 0.1 / N, the runs' default rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fedtune.errors import ConfigError, require
from fedtune.privacy.accountant import NEIGHBOURING, SAMPLING, rdp_accountant, round_event

#: z is searched to this relative precision (the printed z is on the safe side: its epsilon
#: is at most the target)
Z_PRECISION = 1e-3
Z_MAX = 1e6


@dataclass(frozen=True)
class Plan:
    """A federation and schedule: N clients, m sampled per round, R rounds, at delta."""

    population: int
    per_round: int
    rounds: int
    delta: float

    def epsilon(self, noise_multiplier: float) -> float:
        """Epsilon after all R rounds with noise multiplier z (inf for z = 0), as a run with
        these settings reports it at its end."""
        if noise_multiplier == 0:
            return float("inf")
        rdp = rdp_accountant()  # the runs' accountant: same relation, same round event
        rdp.compose(round_event(noise_multiplier, self.per_round, self.population), self.rounds)
        return float(rdp.get_epsilon(self.delta))

    def noise_for(self, target_epsilon: float) -> float:
        """The smallest z (to :data:`Z_PRECISION`, rounded up) whose epsilon is <= the target."""
        lo, hi = 0.0, 1.0
        while self.epsilon(hi) > target_epsilon:
            lo, hi = hi, 2 * hi
            require(hi <= Z_MAX, f"--target-epsilon={target_epsilon:g} needs a noise "
                                 f"multiplier above {Z_MAX:g}; raise the target.")
        while hi - lo > Z_PRECISION * hi:  # epsilon(lo) > target >= epsilon(hi)
            mid = (lo + hi) / 2
            if self.epsilon(mid) > target_epsilon:
                lo = mid
            else:
                hi = mid
        return _round_up(hi)

    def describe(self) -> str:
        return (f"N={self.population} clients, m={self.per_round} per round ({SAMPLING}), "
                f"{self.rounds} rounds, delta={self.delta:.3g}; RDP (dp-accounting), "
                f"{NEIGHBOURING} (sensitivity 2C)")


def _round_up(z: float) -> float:
    """``z`` rounded up to 4 significant digits (a larger z never raises epsilon)."""
    step = 10.0 ** (math.floor(math.log10(z)) - 3)
    return float(f"{math.ceil(z / step) * step:.4g}")


def _number(name: str, text: str | None, kind: type) -> float:
    require(text is not None, f"dp-plan needs --{name}.")
    try:
        value = kind(text)
    except ValueError:
        raise ConfigError(f"--{name}={text} is not {'an integer' if kind is int else 'a number'}"
                          ".") from None
    require(math.isfinite(value), f"--{name}={text} must be a finite number.")
    return value


def plan_from_args(population: str | None, per_round: str | None, rounds: str | None,
                   delta: str | None) -> Plan:
    """A :class:`Plan` from the command line's strings; a bad value is one sentence."""
    n = int(_number("population", population, int))
    m = int(_number("per-round", per_round, int))
    r = int(_number("rounds", rounds, int))
    require(n >= 1, f"--population={n} must be at least 1.")
    require(1 <= m <= n, f"--per-round={m} must be between 1 and --population={n}.")
    require(r >= 1, f"--rounds={r} must be at least 1.")
    d = 0.1 / n if delta is None else _number("delta", delta, float)
    require(0 < d < 1 / n, f"--delta={d:g} must be in (0, 1/N) = (0, {1 / n:.3g}): a larger "
                           "delta allows releasing one client's data outright.")
    return Plan(n, m, r, d)


def run(population: str | None, per_round: str | None, rounds: str | None,
        noise_multiplier: str | None, target_epsilon: str | None, delta: str | None) -> str:
    """What ``fedtune dp-plan`` prints (ConfigError for bad arguments)."""
    require((noise_multiplier is None) != (target_epsilon is None),
            "dp-plan takes exactly one of --noise-multiplier and --target-epsilon.")
    plan = plan_from_args(population, per_round, rounds, delta)
    if noise_multiplier is not None:
        z = _number("noise-multiplier", noise_multiplier, float)
        require(z > 0, f"--noise-multiplier={z:g} must be > 0 (without noise epsilon is "
                       "unbounded).")
        return (f"{plan.describe()}\nnoise multiplier z = {z:g}\n"
                f"epsilon = {plan.epsilon(z):.6g}")
    target = _number("target-epsilon", target_epsilon, float)
    require(target > 0, f"--target-epsilon={target:g} must be > 0.")
    z = plan.noise_for(target)
    return (f"{plan.describe()}\nnoise multiplier z = {z:.4g} (the smallest reaching the "
            f"target epsilon {target:g})\nepsilon = {plan.epsilon(z):.6g}")
