"""What fedtune's round loop asks of a strategy besides Flower's ``Strategy`` methods, typed and
with no-op defaults, so a wrapper chain (trust policy, DP, SecAgg) and a strategy with its own
check (SCAFFOLD) override what they need and the loop asks every strategy the same way.

A strategy that is not a :class:`StrategyHooks` (one of Flower's own, as built) gets the
defaults through :func:`hooks_of`. The chain's order is :data:`fedtune.strategies.CHAIN`'s.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedtune.wire import Records


class StrategyHooks:
    """The round loop's optional calls into a strategy, each a no-op by default."""

    #: replies are masked (secure aggregation): the loop checks them with
    #: :meth:`check_reply` only and neither the trust policy nor the algorithm reads them
    masks_replies: bool = False

    #: the strategy averages each metric over the replies that carry it
    #: (:func:`fedtune.strategies.metrics.mean_metrics`), so the loop keeps a key only some
    #: replies have (a FedKSeed client that skipped every step reports no ``train-loss``)
    partial_metrics: bool = False

    def bind_run(self, run_id: int, fingerprint: str) -> None:
        """The run served: Flower's run id and the config's fingerprint."""
        del run_id, fingerprint

    def admit_round(self, server_round: int, population: int, sample_size: int) -> str | None:
        """None if the round may run, else why the run stops (a spent privacy budget)."""
        del server_round, population, sample_size
        return None

    def check_reply(self, content: Records) -> str | None:
        """Why a train reply is invalid for this strategy, after the algorithm's check."""
        del content
        return None

    def screen(self, replies: list[Any], names: list[str], sent: Any) -> None:
        """The round's valid train replies, in their stable order, before the algorithm's
        ``receive`` and any aggregation (the trust policy weighs and bounds them here, in
        place); ``names``: the nodes' stable names, ``sent``: the round's global arrays. Never
        called on masked replies."""
        del replies, names, sent

    def weigh_evaluate(self, replies: list[Any], names: list[str]) -> None:
        """The federated-evaluation replies before their mean (the trust policy's example
        weights apply to it too)."""
        del replies, names

    def round_report(self) -> dict[str, Any]:
        """Extra columns of a metrics row."""
        return {}

    def final_report(self) -> dict[str, Any]:
        """Extra keys of the run's summary."""
        return {}

    def release_sum(self, server_round: int, reply: Any, total: Any) -> Any | None:
        """Under secure aggregation: aggregate the unmasked sum ``total`` (and ``reply``, the
        one reply FedAvg would have computed) itself, or None to let the wrapped strategy
        aggregate ``reply`` (differential privacy adds its noise here)."""
        del server_round, reply, total
        return None


NO_HOOKS = StrategyHooks()


def hooks_of(strategy: Any) -> StrategyHooks:
    """``strategy``'s hooks: itself, or the no-op defaults for a plain Flower strategy."""
    return strategy if isinstance(strategy, StrategyHooks) else NO_HOOKS


def has_check(hooks: StrategyHooks) -> bool:
    """Whether ``hooks`` checks replies beyond the default (which accepts all)."""
    return type(hooks).check_reply is not StrategyHooks.check_reply
