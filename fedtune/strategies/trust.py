"""The trust policy: how much one client's reply may weigh and move the global model.

It is a wrapper in the strategy chain (:class:`Trust`, right around the configured strategy:
:data:`fedtune.strategies.CHAIN`) whose :meth:`~Trust.screen` the round loop calls on the
round's valid replies, in their stable order, before the algorithm's ``receive`` and any
aggregation, so it holds for every strategy (Flower's FedAvg family, SCAFFOLD, the seeds
strategy) and for any algorithm whose replies carry ``num-examples`` in their ``metrics``
record. Replies masked by secure aggregation cannot be read, so it does not apply to them (the
compatibility table refuses an explicit policy with ``secagg='on'``).

- ``example-weights`` (what FedAvg weights a reply by): ``reported`` as the client says;
  ``capped``: at most ``max-examples``, or, with ``max-examples=0``, at most
  ``max-examples-ratio`` x the round's median report; ``equal``: every reply 1. A capped
  report is logged with the node's stable name. ``auto`` is resolved by the ServerApp
  (:func:`resolve_weights`): ``capped`` through a SuperLink, ``reported`` in simulation.
- ``max-update-norm-ratio`` (0 = off): a reply whose update norm exceeds ratio x the round's
  median update norm is scaled down to that bound (its direction and its data still count; an
  honest client with a longer local round is not lost, and the round keeps its client count
  for ``min-train-nodes``), and logged by name. What an update and its norm are is the
  algorithm's payload (its server side's ``payload``, :mod:`fedtune.payloads`), never a kind
  string or the run config, and each bound is on what moves the model:

  - arrays (FedIT's ``fedit``/``fedsa`` adapters, full fine-tuning): the reply minus the round's
    global arrays as the wire delivered them (zero-padded or cut to a node's LoRA rank), L2
    over all arrays; scaled linearly.
  - FedKSeed's seed pairs: the per-seed sums c_s = sum_t [s_t = s] g_t over its K seeds (the
    model moves by lr sum_s c_s z(s)), not the scalars: a client repeating one seed tau times
    has a sqrt(tau) times larger effect than its scalars' norm; the scalars are scaled.
  - Ferret's (block, seed) coefficients: the per-entry sums over its own pool (blocks x
    ferret-seeds entries), each block weighted by sqrt(sigma2 d_b) (d_b: its weights), i.e. the
    expected norm of the reconstructed update; the coefficients are scaled.
  - FLoRA, FedEx-LoRA, FFA-LoRA (:mod:`fedtune.algorithms.fedit.payload`): the change of the
    LoRA product s (B'A' - BA) per layer, plus the modules_to_save update. FLoRA is scaled
    through B' only (scaling both factors by t would scale the product by t^2), FFA through
    B' - B (A is frozen): both exactly; FedEx-LoRA's rank-r factors cannot carry a scaled
    rank-2r change, so both factor updates are scaled by the largest t (bisection) that keeps
    the product's change within the bound.

  The seed payloads' norms hold up to the near-orthogonality of the z's: K random directions
  in d weights stretch a coefficient vector by at most about 1 + sqrt(K / d) over its
  expected norm (per block for Ferret).

The median is the lower median (the smaller middle value), so with two clients the honest one
sets the bound; a minority of liars cannot raise it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid

from fedtune.payloads import ArraysPayload, Payload, payload_of, shrink
from fedtune.strategies.config import StrategySection
from fedtune.strategies.wrapper import Wrapper
from fedtune.wire import NUM_EXAMPLES, as_received
from fedtune.wire.flower import read_record, write_record

log = logging.getLogger("fedtune")

Arrays = Mapping[str, np.ndarray]


def resolve_weights(section: StrategySection, deployed: bool, masked: bool = False) -> None:
    """Replace ``example-weights='auto'``: ``capped`` for a ServerApp run through a SuperLink
    (``deployed``) or with ``max-examples`` set, else ``reported``; always ``reported`` when
    secure aggregation hides each client's count (``masked``)."""
    if section.example_weights == "auto":
        capped = (deployed or section.max_examples > 0) and not masked
        section.example_weights = "capped" if capped else "reported"
        if deployed and masked:
            log.warning("secagg='on' hides each client's example count from the server, so "
                        "example weights are as the clients report them")


def lower_median(values: Sequence[float]) -> float:
    """The smaller middle value (the median of an odd count)."""
    ordered = sorted(values)
    return float(ordered[(len(ordered) - 1) // 2])


class TrustPolicy:
    """The ``strategy`` section's trust policy over one round's replies (changed in place).

    ``payload``: how the algorithm's replies carry an update (its server side's ``payload``,
    :func:`fedtune.payloads.payload_of`); ``wire_dtype``: what the global arrays were cast to
    on the way down (the reference an update is measured from)."""

    def __init__(self, section: StrategySection, payload: Payload | None = None,
                 wire_dtype: type | None = None) -> None:
        self.section = section
        self.payload = payload if payload is not None else ArraysPayload()
        self.wire_dtype = wire_dtype

    def weigh(self, replies: Sequence[Message], names: Sequence[str]) -> None:
        """Apply ``example-weights`` to each reply's ``num-examples``."""
        how = self.section.example_weights
        if how in ("reported", "auto") or not replies:
            return
        if how == "equal":
            for reply in replies:
                reply.content["metrics"][NUM_EXAMPLES] = 1
            return
        counts = [float(r.content["metrics"][NUM_EXAMPLES]) for r in replies]
        if self.section.max_examples > 0:
            cap, why = self.section.max_examples, f"max-examples={self.section.max_examples}"
        else:
            median = lower_median(counts)
            ratio = self.section.max_examples_ratio
            cap = max(1, int(ratio * median))
            why = f"max-examples-ratio={ratio:g} x the round's median {median:g}"
        for reply, name, n in zip(replies, names, counts, strict=True):
            if n > cap:
                reply.content["metrics"][NUM_EXAMPLES] = cap
                log.warning("capped the example count of %s from %g to %d (%s)", name, n,
                            cap, why)

    def bound(self, replies: Sequence[Message], names: Sequence[str], sent: Arrays) -> None:
        """Scale each update whose norm exceeds ``max-update-norm-ratio`` x the round's median
        update norm down to that bound; ``sent``: the round's global arrays (float32)."""
        ratio = self.section.max_update_norm_ratio
        if ratio <= 0 or not replies:
            return
        sent = as_received(sent, self.wire_dtype)
        p = self.payload
        records = [read_record(r.content, p.record, p.array_record) for r in replies]
        norms = {i: self.payload.norm(rec, sent) for i, rec in enumerate(records)
                 if rec is not None}
        if not norms:
            return  # no update this payload can read
        median = lower_median(list(norms.values()))
        limit = ratio * median
        for i, norm in norms.items():
            if norm > limit:
                write_record(replies[i].content, p.record,
                             shrink(p, records[i], sent, norm, limit), p.array_record)
                log.warning("scaled the update of %s down from norm %.4g to %.4g "
                            "(max-update-norm-ratio=%g x the round's median %.4g)", names[i],
                            norm, limit, ratio, median)



class Trust(Wrapper):
    """The trust policy as a link of the strategy chain: the loop's :meth:`screen` and
    :meth:`weigh_evaluate` apply it; everything else goes to the wrapped strategy."""

    def __init__(self, inner, section: StrategySection, payload: Payload,
                 wire_dtype: type | None) -> None:
        super().__init__(inner, payload, wire_dtype)
        self.policy = TrustPolicy(section, payload, wire_dtype)

    def screen(self, replies: list[Message], names: list[str], sent: Arrays) -> None:
        self.policy.weigh(replies, names)
        self.policy.bound(replies, names, sent)

    def weigh_evaluate(self, replies: list[Message], names: list[str]) -> None:
        self.policy.weigh(replies, names)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid):
        return self.inner.configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies) -> tuple[ArrayRecord | None,
                                                                    MetricRecord | None]:
        return self.inner.aggregate_train(server_round, replies)


def active(section: StrategySection) -> bool:
    """Whether the policy changes anything (``auto`` is resolved by the ServerApp before)."""
    return section.example_weights in ("capped", "equal") or section.max_update_norm_ratio > 0


def wrap(strategy, cfg, server) -> Trust:
    """``strategy`` under the run's trust policy, on the payload ``server`` (the algorithm's
    server side) declares."""
    return Trust(strategy, cfg.strategy, payload_of(server), getattr(server, "wire_dtype", None))
