"""The round loop's calls into the algorithm's and the strategy's optional hooks.

The loop asks an algorithm's server side (``fedtune.algorithms.base.ServerSide``) and a
strategy only for what every one of them has; what some have (FedIT's LoRA variants' per-node
records and merge, a DP strategy's budget, SecAgg's masked replies) goes through here, so the
loop reads the same for all.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.app import Message, RecordDict
from flwr.serverapp.strategy import Strategy

from fedtune.algorithms.base import ServerHooks, ServerSide
from fedtune.strategies.hooks import has_check, hooks_of
from fedtune.wire import Records
from fedtune.wire.flower import from_arrayrecord, to_recorddict, to_records

log = logging.getLogger("fedtune")

if TYPE_CHECKING:
    from fedtune.flower.registry import NodeRegistry

Check = Callable[[Records], str | None]


def address(messages: list[Message], algo: ServerSide, registry: NodeRegistry
            ) -> list[Message]:
    """Add what the algorithm sends one node only (``down_records(name)``: e.g. the merged base
    change a FLoRA node missed) to that node's message, on its own copy of the content."""
    for msg in messages:
        records = algo.down_records(registry.name(msg.metadata.dst_node_id))
        if records is not None:
            content = RecordDict(dict(msg.content.items()))
            for name, record in to_recorddict(records).items():
                content[name] = record
            msg.content = content
    return messages


def delivered(algo: ServerSide, registry: NodeRegistry, messages: list[Message],
              answered: set[int]) -> None:
    """Tell the algorithm which addressed nodes replied without error (``delivered``)."""
    for msg in messages:
        node = msg.metadata.dst_node_id
        algo.delivered(registry.name(node), node in answered)


def aggregate(strategy: Strategy, algo: ServerSide, rnd: int, replies: list[Message]
              ) -> tuple[dict[str, np.ndarray] | None, Any]:
    """The strategy's aggregate of the valid replies, between the algorithm's ``receive``
    (each reply, e.g. zero-padded to the global rank; not for masked replies, which only a
    secure-aggregation strategy can read) and ``merge`` (the result, e.g. FLoRA's exact product
    merged into the base)."""
    receives = type(algo).receive is not ServerHooks.receive  # else no copy through Records
    if receives and not hooks_of(strategy).masks_replies:
        records = algo.receive([to_records(r.content) for r in replies])
        for reply, rec in zip(replies, records, strict=True):
            reply.content = to_recorddict(rec)
    if not hooks_of(strategy).partial_metrics:
        _common_metrics(replies)
    new, metrics = strategy.aggregate_train(rnd, replies)
    if new is None:
        return None, metrics
    arrays = from_arrayrecord(new)
    return algo.merge(rnd, arrays), metrics


def _common_metrics(replies: list[Message]) -> None:
    """Keep only the metric keys every reply has: Flower's averaging refuses the whole round
    when one reply's ``metrics`` record has other keys (an old or odd client)."""
    records = [r.content.metric_records.get("metrics") for r in replies]
    if len(records) < 2 or any(rec is None for rec in records):
        return
    common = set.intersection(*(set(rec.keys()) for rec in records))
    for reply, rec in zip(replies, records, strict=True):
        extra = set(rec.keys()) - common
        if extra:
            for key in extra:
                del rec[key]
            reply.content["metrics"] = rec
            log.info("ignored metrics %s of node %d: not in every reply",
                     sorted(extra), reply.metadata.src_node_id)


def reply_check(algo: ServerSide, strategy: Strategy) -> Check:
    """The algorithm's check of a train reply, then the strategy's own (SCAFFOLD's record).
    Under secure aggregation replies are masked, so only the strategy can check them."""
    hooks = hooks_of(strategy)
    if hooks.masks_replies:
        return hooks.check_reply
    if not has_check(hooks):
        return algo.check_reply
    return lambda content: algo.check_reply(content) or hooks.check_reply(content)


def admit(strategy: Strategy, rnd: int, population: int, sample_size: int) -> str | None:
    """A strategy with a budget (differential privacy) may refuse a round: the reason, or
    None. ``population``: the connected nodes the sample was drawn from."""
    return hooks_of(strategy).admit_round(rnd, population, sample_size)


def round_report(strategy: Strategy) -> dict[str, Any]:
    """The strategy's own columns for a metrics row (DP: epsilon so far, noise, clip). Its
    ``extra_bytes_{down,up}_per_client`` (messages it sent itself) add to the bytes columns."""
    return hooks_of(strategy).round_report()
