"""fedtune's server round loop on a Flower Grid.

Flower's ``Strategy.start`` always counts from round 1, samples with an unseeded
``random.sample`` and waits for nodes without a timeout. This loop keeps Flower's strategies for
what they are good at (``configure_*`` builds the messages, ``aggregate_*`` does the math) and
owns the rest: nodes named by something stable (:mod:`fedtune.flower.registry`), sampling from
the run's seeded RNG (under DP from secret randomness), a timeout per round, reply validation
before aggregation, replies in a stable order, centralized evaluation (round 0 included),
measured bytes and the results folder (under DP without anything per client: only each
round's counts).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedtune.algorithms.base import ServerSide
from fedtune.checkpoint import config_fingerprint
from fedtune.config import Config
from fedtune.flower.hooks import (
    Check,
    address,
    admit,
    aggregate,
    delivered,
    reply_check,
    round_report,
)
from fedtune.flower.records import reply_report
from fedtune.flower.registry import WAIT_FOR_NODES, NodeRegistry
from fedtune.logs import user_error
from fedtune.privacy.randomness import privacy_rng
from fedtune.seeding import rng
from fedtune.strategies.hooks import StrategyHooks, hooks_of
from fedtune.wire import check_metrics
from fedtune.wire.flower import (
    content_bytes,
    from_arrayrecord,
    payload_bytes,
    to_arrayrecord,
    to_records,
)

log = logging.getLogger("fedtune")



class SampledGrid:
    """A view of a Grid that exposes only the nodes fedtune sampled.

    Flower's strategies sample inside ``configure_train``; given this view with fraction 1.0
    they address exactly fedtune's seeded sample and never wait.
    """

    def __init__(self, grid: Grid, node_ids: Iterable[int]) -> None:
        self._grid = grid
        self._ids = list(node_ids)

    def get_node_ids(self) -> list[int]:
        return list(self._ids)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


def sample(ids: list[int], fraction: float, min_nodes: int, *seed_parts: int | str,
           gen: np.random.Generator | None = None) -> list[int]:
    """Sample over nodes in stable (name) order, from ``gen`` or the generator seeded by
    ``seed_parts``."""
    k = min(len(ids), max(min_nodes, int(len(ids) * fraction)))
    picks = (gen or rng(*seed_parts)).choice(len(ids), size=k, replace=False)
    return [ids[i] for i in sorted(picks)]


def train_sample(cfg: Config, ids: list[int], rnd: int) -> list[int]:
    """Round ``rnd``'s train sample: seeded by the run, or under DP from
    :func:`~fedtune.privacy.randomness.privacy_rng` (fresh entropy, or the server's secret and
    the config's fingerprint: a resumed run samples as the uninterrupted one did)."""
    s = cfg.server
    gen = (privacy_rng("dp-sample", config_fingerprint(cfg.to_flat()), rnd)
           if cfg.privacy.enabled else None)
    return sample(ids, s.fraction_train, s.min_train_nodes, s.seed, "train", rnd, gen=gen)


@dataclass
class RoundReplies:
    valid: list[Message]
    dropped: int
    missing: int
    bytes_up: float
    payload_up: float
    answered: set[int] = field(default_factory=set)  # node ids that replied without error
    drops: list[tuple[str, str]] = field(default_factory=list)  # (node, why) per dropped reply


def collect(grid: Grid, messages: list[Message], registry: NodeRegistry, timeout: float,
            check: Check) -> RoundReplies:
    """Send, wait at most ``timeout``, drop (and log) failed or invalid replies, sort by name."""
    replies = list(grid.send_and_receive(messages, timeout=timeout)) if messages else []
    # The SuperLink answers for a node it lost (missed heartbeats) with an error reply whose
    # source is the SuperLink itself: name the node by the message the reply answers.
    sent = {m.metadata.message_id: m.metadata.dst_node_id for m in messages
            if m.metadata.message_id}

    def origin(reply: Message) -> int:
        return sent.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)

    valid, drops = [], []
    ok = [r for r in replies if not r.has_error()]
    for reply in replies:
        who = registry.name(origin(reply))
        reason = reply.error.reason if reply.has_error() else check(to_records(reply.content))
        if reason:
            reason = user_error(reason) or reason  # a ClientApp's user error: its sentence
            log.warning("dropped reply from %s: %s", who, reason)
            drops.append((who, reason))
        else:
            valid.append(reply)
    valid.sort(key=lambda r: registry.name(r.metadata.src_node_id))
    answered = {origin(r) for r in replies}
    silent = sorted(registry.name(m.metadata.dst_node_id) for m in messages
                    if m.metadata.dst_node_id not in answered)
    if silent:
        log.warning("no reply within %.0f s from %s", timeout, ", ".join(silent))
    return RoundReplies(valid, len(drops), len(messages) - len(replies),
                        _mean([content_bytes(r.content) for r in ok]),
                        _mean([payload_bytes(r.content) for r in ok]),
                        {origin(r) for r in ok}, sorted(drops))  # by name: arrival varies


def skip_reason(got: RoundReplies, sampled: int, needed: int, connected: int,
                private: bool = False) -> str:
    """Why a round had too few valid replies, for its row and the run's last word; with
    ``private`` (DP) counts only: a node's name or its reply's fault is per-client data."""
    if not sampled:
        return f"{connected} nodes connected, {needed} needed (min-train-nodes)"
    why = f"{len(got.valid)} valid replies of {sampled}, {needed} needed (min-train-nodes)"
    if got.drops and private:
        why += f"; {got.dropped} dropped (the server's log says why)"
    elif got.drops:  # a crash's reason is a traceback: its last line says what
        who, reason = got.drops[0]
        last = ([line for line in reason.splitlines() if line.strip()] or [reason])[-1]
        last = last.rstrip("'>")
        why += f"; {got.dropped} dropped, e.g. {who}: {last[:300]}"
    if got.missing:
        why += f"; {got.missing} without a reply within round-timeout"
    return why


def _mean(values: list[int]) -> float:
    return float(np.mean(values)) if values else 0.0


def _to_wire(messages: Iterable[Message], dtype: type | None) -> list[Message]:
    """Cast outgoing arrays to the wire dtype (FedIT: 16-bit).

    Strategies get the float32 master (server optimizers such as FedAdam keep it as x_t); only
    what crosses the wire is cast.
    """
    msgs = list(messages)
    if dtype is None:
        return msgs
    done: set[int] = set()
    for msg in msgs:
        content = msg.content
        if id(content) in done or "arrays" not in content.array_records:
            continue
        content["arrays"] = to_arrayrecord(from_arrayrecord(content["arrays"]), dtype)
        done.add(id(content))
    return msgs


def _as_float32(reply: Message) -> Message:
    """Aggregate in float32 whatever 16-bit dtype crossed the wire."""
    if "arrays" not in reply.content.array_records:
        return reply
    arrays = from_arrayrecord(reply.content.array_records["arrays"])
    reply.content["arrays"] = to_arrayrecord(arrays)
    return reply


def run_rounds(grid: Grid, cfg: Config, algo: ServerSide, strategy: Strategy,
               on_round: Callable[[dict[str, Any]], None],
               wait_for_nodes: float = WAIT_FOR_NODES,
               resume_from: tuple[int, dict[str, np.ndarray]] | None = None,
               on_checkpoint: Callable[[int, dict[str, np.ndarray]], None] | None = None,
               registry: NodeRegistry | None = None) -> dict[str, np.ndarray]:
    """Round 0 evaluation, then ``num-server-rounds`` rounds; returns the final arrays.

    A train reply is dropped (and logged) when :func:`reply_check` gives a reason; the valid
    ones then pass the strategy chain's ``screen`` (the trust policy,
    :mod:`fedtune.strategies.trust`: example weights, update norms) before the algorithm's
    ``receive`` and the aggregation, unless they are masked (secure aggregation).
    A strategy's :func:`admit` may end the run before a round (a spent privacy budget).
    ``resume_from`` = (last complete round, its global arrays) continues a run from its
    checkpoint; ``on_checkpoint(round, arrays)`` runs after every round's ``on_round``.
    ``registry``: one whose first refresh (:func:`first_refresh`) already started early.
    """
    s = cfg.server
    private = cfg.privacy.enabled
    check_reply = reply_check(algo, strategy)
    hooks = hooks_of(strategy)
    registry = registry or NodeRegistry(grid, timeout=s.round_timeout)
    if resume_from is None:
        done, arrays = 0, algo.initial_arrays()
        start = time.perf_counter()
        on_round({"round": 0, **_row_defaults(cfg), **algo.evaluate(arrays),
                  **round_report(strategy), "seconds": time.perf_counter() - start})
        if on_checkpoint is not None:
            on_checkpoint(0, arrays)
    else:
        done, arrays = resume_from

    for rnd in range(done + 1, s.num_server_rounds + 1):
        start = time.perf_counter()
        if rnd == done + 1:  # min-available-nodes gates the start only
            registry.refresh(first_refresh(cfg), wait_for_nodes)
        else:  # later, wait a round-timeout for lost nodes, then skip rounds rather than stop
            registry.refresh(s.min_train_nodes, s.round_timeout, strict=False)
        ids = registry.sorted_ids()
        # too few nodes: send nothing (Flower's configure_train would wait for them forever)
        chosen = train_sample(cfg, ids, rnd) if len(ids) >= s.min_train_nodes else []
        stop = admit(strategy, rnd, len(ids), len(chosen)) if chosen else None
        if stop:
            log.warning("%s", stop)
            print(f"fedtune: {stop}; the run ends here.", flush=True)
            break
        train_config = algo.train_config(rnd)
        msgs = address(_to_wire(strategy.configure_train(rnd, to_arrayrecord(arrays),
                                                         ConfigRecord(train_config),
                                                         SampledGrid(grid, chosen)),
                                algo.wire_dtype), algo, registry) if chosen else []
        down = _mean([content_bytes(m.content) for m in msgs])
        down_payload = _mean([payload_bytes(m.content) for m in msgs])
        got = collect(grid, msgs, registry, s.round_timeout, check_reply)
        delivered(algo, registry, msgs, got.answered)
        row: dict[str, Any] = {"round": rnd, **_row_defaults(cfg), "lr": train_config.get("lr"),
                               "clients": len(got.valid), "sampled": len(msgs),
                               "dropped": got.dropped, "timed_out": got.missing,
                               "bytes_down_per_client": down, "bytes_up_per_client": got.bytes_up,
                               "payload_down_per_client": down_payload,
                               "payload_up_per_client": got.payload_up}
        if len(got.valid) < s.min_train_nodes:
            log.warning("round %d skipped: %d valid replies, %d needed (min-train-nodes)",
                        rnd, len(got.valid), s.min_train_nodes)
            row["skipped"] = True
            row["skip_reason"] = skip_reason(got, len(msgs), s.min_train_nodes, len(ids),
                                             private)
        else:
            replies = [_as_float32(r) for r in got.valid]
            row["replies"] = ([{"replies": len(replies), "dropped": got.dropped,
                                "timed_out": got.missing}] if private else
                              [{"node": registry.name(r.metadata.src_node_id),  # as reported
                                **reply_report(r.content)} for r in replies])
            if not hooks.masks_replies:  # the trust policy, when the chain has it
                hooks.screen(replies, [registry.name(r.metadata.src_node_id) for r in replies],
                             arrays)
            new, metrics = aggregate(strategy, algo, rnd, replies)
            if new is None:  # the strategy could not aggregate (it logged why)
                row["skipped"] = True
                row["skip_reason"] = "the strategy could not aggregate the replies (see its log)"
            else:
                arrays = new
            if private:  # the clients' mean loss, time, rewards: never noised, not released
                metrics = None
            row["train_loss"] = metrics.get("train-loss") if metrics else None
            if metrics and "train-seconds" in metrics:  # a client's local round, on average
                row["seconds_train"] = metrics["train-seconds"]
            for key in ("train-reward-accuracy", "train-reward-margin"):  # DPO rounds
                if metrics and key in metrics:
                    row[key.replace("-", "_")] = metrics[key]
        row.update(_federated_eval(grid, cfg, strategy, algo, registry, ids, arrays, rnd,
                                   hooks))
        if rnd % cfg.eval.eval_every == 0 or rnd == s.num_server_rounds:
            row.update(algo.evaluate(arrays))
        row.update(round_report(strategy))
        for way in ("down", "up"):  # a strategy's own exchanges (SecAgg's stages) count too
            row[f"bytes_{way}_per_client"] += row.get(f"extra_bytes_{way}_per_client", 0)
        row["seconds"] = time.perf_counter() - start
        on_round(row)
        if on_checkpoint is not None:
            on_checkpoint(rnd, arrays)
    return arrays


def first_refresh(cfg: Config) -> int:
    """The nodes the first round waits for: min-available-nodes gates the start."""
    return max(cfg.server.min_train_nodes, cfg.server.min_available_nodes)


def _row_defaults(cfg: Config) -> dict[str, Any]:
    return {"algorithm": cfg.train.algorithm, "objective": cfg.train.objective,
            "train_loss": None, "eval_loss": None, "bytes_down_per_client": 0,
            "bytes_up_per_client": 0, "clients": 0}


def _federated_eval(grid: Grid, cfg: Config, strategy: Strategy, algo: ServerSide,
                    registry: NodeRegistry, ids: list[int], arrays: dict[str, np.ndarray],
                    rnd: int, hooks: StrategyHooks) -> dict[str, Any]:
    """Clients evaluate the new global adapter on their own held-out examples (a personalised
    method's clients, with the parts they keep); the trust policy's example weights apply to
    the mean of their losses too."""
    s = cfg.server
    if s.fraction_evaluate == 0 or not ids or cfg.privacy.enabled or cfg.secagg.enabled:
        return {}  # (refused before the run starts: the clients' losses in the clear)
    chosen = sample(ids, s.fraction_evaluate, s.min_evaluate_nodes, s.seed, "evaluate", rnd)
    msgs = address(_to_wire(strategy.configure_evaluate(
        rnd, to_arrayrecord(arrays), ConfigRecord({}), SampledGrid(grid, chosen)),
        algo.wire_dtype), algo, registry)
    got = collect(grid, msgs, registry, s.round_timeout, check_metrics)
    hooks.weigh_evaluate(got.valid, [registry.name(r.metadata.src_node_id) for r in got.valid])
    metrics = strategy.aggregate_evaluate(rnd, got.valid) if got.valid else None
    if not metrics:
        return {}
    return {"fed_eval_loss": metrics.get("eval-loss"), "fed_eval_clients": len(got.valid)}

