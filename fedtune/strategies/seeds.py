"""FedKSeed's aggregation (Qin et al., ICML 2024, Alg. 1, server side), with server momentum and
robust clipping as options.

The global state is the accumulated-scalar vector A (one float32 per seed of the pool), carried
as ``arrays["accumulated"]``. A round sends A (and the algorithm's train config: the pool's
fingerprint, FedKSeed-Pro's importance) and receives up to tau packed (seed index, scalar) pairs
per client (a skipped step is left out). Aggregation is A_s += sum_i w_i * sum_t [s_it = s] g_it,
w_i the client's share of the examples (or 1/n with ``seeds-equal-weights``), in the stable reply
order the loop provides; the model every party holds is the exact version of A, so with a
constant lr this is FedAvg of the clients' deltas (up to A's 2**-16 quantum). Replies are
validated before they reach this class.

- ``seeds-robust-clip``: clip every scalar of the round to +-(factor x the median |g| over all
  clients' scalars): a client that scales its scalars up cannot move A further than an honest
  one. At tau = 200 and K = 4096 clients rarely share a seed, so a per-seed median would mostly
  be a median of zeros.
- ``seeds-server-momentum``: m = beta m + dA, A += m (the model is still the exact replay of A).
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord
from flwr.app import RecordDict as Content
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log

from fedtune.seeded import SeedPool, accumulate_, unpack_pairs
from fedtune.strategies.config import SeedsSection
from fedtune.strategies.hooks import StrategyHooks
from fedtune.strategies.metrics import mean_metrics
from fedtune.strategies.state import StatefulStrategy

Reply = tuple[np.ndarray, np.ndarray, int]  # (seed indices, scalars, examples)


def robust_clip(replies: list[Reply], factor: float) -> list[Reply]:
    """Every scalar clipped to +-(factor x the median |g| over all the round's scalars)."""
    if factor <= 0 or not any(g.size for _, g, _ in replies):
        return replies
    scale = float(np.median(np.abs(np.concatenate([g for _, g, _ in replies]))))
    bound = np.float32(factor * scale)
    return [(i, np.clip(g, -bound, bound), n) for i, g, n in replies]


def aggregate(accumulated: np.ndarray, replies: list[Reply], options: SeedsSection,
              momentum: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(new A, new momentum) after one round's (clipped) replies, in reply order."""
    delta = np.zeros_like(accumulated, dtype=np.float32)
    total = sum(n for _, _, n in replies)
    for indices, scalars, n in replies:
        weight = 1.0 / len(replies) if options.seeds_equal_weights else n / total
        accumulate_(delta, indices, scalars, weight)
    if options.seeds_server_momentum > 0:
        momentum = (np.float32(options.seeds_server_momentum) * momentum + delta).astype(np.float32)
        delta = momentum
    return (accumulated + delta).astype(np.float32), momentum


class FedKSeedStrategy(StatefulStrategy, StrategyHooks, Strategy):
    """Aggregates seed-scalar replies into A; records them in the pool's Pro statistics.
    Each metric is the mean over the replies that report it (a client that skipped every step
    has no ``train-loss``)."""

    partial_metrics = True
    state_attrs = ("momentum",)
    transient_attrs = ("current",)  # A of the round in flight, set by every configure_train

    def __init__(self, pool: SeedPool, options: SeedsSection) -> None:
        self.pool = pool
        self.options = options
        self.momentum = np.zeros(pool.k, dtype=np.float32)
        self.current: np.ndarray | None = None
        super().__init__()

    def summary(self) -> None:
        log(INFO, "\t├──> FedKSeed: K=%d", self.pool.k)

    def _messages(self, rnd: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid,
                  message_type: str) -> list[Message]:
        config["server-round"] = rnd
        content = Content({"arrays": arrays, "config": config})
        return [Message(content, dst_node_id=node, message_type=message_type)
                for node in grid.get_node_ids()]

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self.current = arrays["accumulated"].numpy()
        return self._messages(server_round, arrays, config, grid, MessageType.TRAIN)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        if not replies or self.current is None:
            return None, None
        parsed = []
        for reply in replies:
            indices, scalars = unpack_pairs(reply.content["zo"]["pairs"], self.pool.k)
            parsed.append((indices, scalars, int(reply.content["metrics"]["num-examples"])))
        parsed = robust_clip(parsed, self.options.seeds_robust_clip)
        for reply, (indices, scalars, _) in zip(replies, parsed, strict=True):
            zo = reply.content["zo"]
            if "pro-abs-sums" in zo:  # a secure sum: the clients' statistics, summed
                self.pool.abs_sums += np.frombuffer(zo["pro-abs-sums"], dtype="<f8")
                self.pool.counts += np.frombuffer(zo["pro-counts"], dtype="<i8")
            else:  # Pro's statistics see the clipped scalars
                self.pool.update(indices, scalars)
        new, self.momentum = aggregate(self.current, parsed, self.options, self.momentum)
        metrics = mean_metrics([r.content for r in replies], "num-examples")
        return ArrayRecord({"accumulated": Array(new)}), metrics

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self._messages(server_round, arrays, config, grid, MessageType.EVALUATE)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]
                           ) -> MetricRecord | None:
        contents = [r.content for r in replies]
        return mean_metrics(contents, "num-examples") if contents else None


def build(name: str, cfg, server) -> FedKSeedStrategy:
    del name
    return FedKSeedStrategy(server.pool, cfg.seeds)
