"""User-level central differential privacy with fixed clipping, around any strategy that uses
the clients' updates only through their mean (Abadi et al., CCS 2016; McMahan et al., "Learning
Differentially Private Recurrent Language Models", ICLR 2018).

Every round, each reply's contribution (the algorithm's payload, :mod:`fedtune.payloads`:
FedIT's adapter update, FedKSeed's per-seed sums) is clipped to L2 norm C (``dp=server``; with
``dp=client`` the node already clipped it and a reply over C is dropped as invalid), the clipped
contributions are summed with equal weights, N(0, (z C)^2) is added to every coordinate, and
the sum is divided by the number of clients *sampled*. The noise comes from
:func:`~fedtune.privacy.randomness.privacy_rng` (OS entropy, or the server's secret): never from
the run seed, which every client and every reader of ``config.json`` knows. Every reply handed
to the wrapped strategy then carries that same noisy mean, so FedAvg, FedProx, FedAvgM and the
FedOpt family (whatever their weights) compute from the released value only: post-processing.
Strategies that look at individual updates (median, trimmed mean, Krum) or upload more
(SCAFFOLD's control variates) are refused by :func:`fedtune.strategies.check_privacy`.

Why not Flower's ``DifferentialPrivacy*FixedClipping`` wrappers: they add the noise after the
wrapped strategy aggregates, so only plain FedAvg stays private; they fail a round unless
exactly ``num_sampled_clients`` replies arrive (fedtune drops bad replies and goes on); their
accountant has no amplification by sampling; and they handle array replies only, not
FedKSeed's (seed, scalar) pairs.

The round loop asks :meth:`admit_round` before sending a round (the budget ``dp-max-epsilon``)
and adds :meth:`round_report` to every metrics row and :meth:`final_report` to the summary.
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log

from fedtune.payloads import Payload, payload_of, record_of
from fedtune.privacy.accountant import NEIGHBOURING, SAMPLING, Accountant
from fedtune.privacy.mechanism import gaussian_noise, l2_norm, noisy_mean
from fedtune.privacy.randomness import privacy_rng, secret_in_use
from fedtune.strategies.wrapper import Wrapper
from fedtune.wire import Records

#: a client-clipped reply may exceed C by float64 rounding only
TOLERANCE = 1e-9


class DifferentialPrivacy(Wrapper):
    """Clip, sum with equal weights, add Gaussian noise, account; then the wrapped strategy."""

    def __init__(self, inner: Strategy, payload: Payload, placement: str,
                 noise_multiplier: float, clip_norm: float, delta: float, max_epsilon: float,
                 wire_dtype: type | None) -> None:
        super().__init__(inner, payload, wire_dtype)
        self.placement = placement
        self.z = noise_multiplier
        self.c = clip_norm
        self.max_epsilon = max_epsilon
        self.accountant = Accountant(delta)
        self.population = self.sample_size = 0  # this round's N and m (admit_round)
        self.stopped = ""

    # ---- the round loop's hooks ----------------------------------------------------------
    def admit_round(self, server_round: int, population: int, sample_size: int) -> str | None:
        """None if the round may run; else the sentence saying why the run stops here."""
        if self.accountant.delta >= 1 / population:
            self.stopped = (
                f"round {server_round} was not run: {population} nodes are connected, so "
                f"delta={self.accountant.delta:.3g} is not below 1/{population}; set "
                "dp-population to the number of nodes that may ever take part")
            return self.stopped
        if self.max_epsilon > 0:
            after = self.accountant.epsilon_after(self.z, sample_size, population)
            if after > self.max_epsilon:
                self.stopped = (
                    f"round {server_round} was not run: it would raise epsilon from "
                    f"{self.accountant.epsilon():.3g} to {after:.3g}, above dp-max-epsilon="
                    f"{self.max_epsilon:g} (delta={self.accountant.delta:.3g})")
                return self.stopped
        self.population, self.sample_size = population, sample_size
        return None

    def round_report(self) -> dict[str, Any]:
        """The privacy columns of a metrics row (epsilon: null = unbounded, no noise).
        ``dp_clipped`` is null: the fraction of clipped replies is a statistic of the
        clients' updates that the mechanism does not release."""
        return {"dp_epsilon": self.accountant.epsilon(), "dp_delta": self.accountant.delta,
                "dp_noise_multiplier": self.z, "dp_clip_norm": self.c, "dp_clipped": None}

    def final_report(self) -> dict[str, Any]:
        return {"dp": self.placement, "dp_epsilon": self.accountant.epsilon(),
                "dp_delta": self.accountant.delta, "dp_rounds": len(self.accountant.rounds),
                "dp_noise_multiplier": self.z, "dp_clip_norm": self.c,
                "dp_accounting": f"RDP (dp-accounting), {SAMPLING}, {NEIGHBOURING} "
                                 "(sensitivity 2C)",
                "dp_stopped": self.stopped or None, "dp_secret": secret_in_use()}

    def check_reply(self, content: Records) -> str | None:
        """The wrapped strategy's check; with ``dp=client``, the norm bound too."""
        reason = super().check_reply(content)
        if reason or self.placement != "client" or self.reference is None:
            return reason
        record = record_of(self.payload, content)
        if record is None:
            return f"no '{self.payload.record}' record"
        norm = l2_norm(self.payload.contribution(record, self.reference))
        if norm > self.c * (1 + TOLERANCE):
            return f"update norm {norm:.4g} exceeds dp-clip-norm={self.c:g} (dp='client')"
        return None

    # ---- Flower's Strategy ---------------------------------------------------------------
    def summary(self) -> None:
        log(INFO, "\t├──> DP (%s): z=%g, C=%g", self.placement, self.z, self.c)
        self.inner.summary()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self.set_reference(arrays)
        return self.inner.configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        if not replies or self.reference is None:
            return self.inner.aggregate_train(server_round, replies)
        if not self.sample_size:
            raise RuntimeError("DifferentialPrivacy.admit_round was not called for round "
                               f"{server_round}: the round loop must call it before sending")
        parts = [self.read(r.content) for r in replies]
        mean, _ = noisy_mean([self.payload.contribution(p, self.reference) for p in parts],
                             self.sample_size, self.c, self.z, self._noise_rng(server_round))
        return self._release(server_round, replies, parts, mean)

    def release_sum(self, server_round: int, reply: Message, total: np.ndarray
                    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Under secure aggregation (``dp=client``): ``total`` is the sum of the survivors'
        client-clipped contributions, which the server never saw one by one. The same noise
        is added, the same division by the sample size follows."""
        if not self.sample_size or self.reference is None:
            raise RuntimeError("DifferentialPrivacy.admit_round and configure_train must run "
                               f"before round {server_round} is released")
        noise = gaussian_noise(total.size, self.z * self.c, self._noise_rng(server_round))
        part = self.read(reply.content)
        return self._release(server_round, [reply], [part], (total + noise) / self.sample_size)

    def _noise_rng(self, server_round: int) -> np.random.Generator:
        """Fresh entropy; with the server's secret, a stream per (config, round): the
        fingerprint keeps two configs (two released runs) from ever sharing noise, and a
        resumed run draws what the uninterrupted one drew."""
        return privacy_rng("dp-noise", self.fingerprint, server_round)

    def _release(self, server_round: int, replies: list[Message], parts: list[dict[str, Any]],
                 mean: np.ndarray) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Every reply carries the noisy mean; the wrapped strategy aggregates; account."""
        assert self.reference is not None
        for reply, part in zip(replies, parts, strict=True):
            self.write(reply.content, self.payload.write(part, mean, self.reference))
        out = self.inner.aggregate_train(server_round, replies)
        self.accountant.record(self.z, self.sample_size, self.population)
        self.sample_size = 0
        return out

    # ---- checkpoints ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        """The accountant's ledger and the wrapped strategy's state. Nothing of the noise: a
        resumed run continues the ledger and draws fresh noise, or, with the server's secret,
        exactly the noise the uninterrupted run drew (bit-identical resume)."""
        inner = self.inner.state_dict()  # type: ignore[attr-defined]
        return {**{f"dp:{k}": v for k, v in self.accountant.state_dict().items()},
                **{f"inner:{k}": v for k, v in inner.items()}}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self.accountant.load_state_dict({k[3:]: v for k, v in state.items()
                                         if k.startswith("dp:")})
        self.inner.load_state_dict(  # type: ignore[attr-defined]
            {k[6:]: v for k, v in state.items() if k.startswith("inner:")})


def wrap(strategy: Strategy, cfg: Any, server: Any) -> DifferentialPrivacy:
    """``strategy`` under the run's ``privacy`` section, on the payload ``server`` (the
    algorithm's server side) declares."""
    p, payload = cfg.privacy, payload_of(server)
    return DifferentialPrivacy(
        strategy, payload, p.dp, p.dp_noise_multiplier, p.clip_norm_for(payload),
        p.delta_for(p.population(cfg.server.min_available_nodes)), p.dp_max_epsilon,
        getattr(server, "wire_dtype", None))
