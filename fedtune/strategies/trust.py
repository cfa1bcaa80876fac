"""The trust policy: how much one client's reply may weigh and move the global model.

The round loop applies it to the round's valid replies, in their stable order, before any
strategy sees them, so it holds for every strategy (Flower's FedAvg family, SCAFFOLD, FedKSeed's
aggregation) and for any algorithm whose replies carry ``num-examples`` in their ``metrics``
record. Replies masked by secure aggregation cannot be read, so it does not apply to them
(:func:`fedtune.strategies.check_privacy` refuses an explicit policy with ``secagg='on'``).

- ``example-weights`` (what FedAvg weights a reply by): ``reported`` as the client says;
  ``capped``: at most ``max-examples``, or, with ``max-examples=0``, at most
  ``max-examples-ratio`` x the round's median report; ``equal``: every reply 1. A capped
  report is logged with the node's stable name. ``auto`` is resolved by the ServerApp
  (:func:`resolve_weights`): ``capped`` through a SuperLink, ``reported`` in simulation.
- ``max-update-norm-ratio`` (0 = off): a reply whose update norm exceeds ratio x the round's
  median update norm is scaled down to that bound (its direction and its data still count; an
  honest client with a longer local round is not lost, and the round keeps its client count
  for ``min-train-nodes``), and logged by name. The update of an ``arrays`` record is the reply
  minus the round's global arrays as the wire delivered them; that of packed seed pairs (a
  ``zo`` config record) is its scalars.

The median is the lower median (the smaller middle value), so with two clients the honest one
sets the bound; a minority of liars cannot raise it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
from flwr.app import Array, ArrayRecord, Message

from fedtune.algorithms.replies import NUM_EXAMPLES
from fedtune.strategies.config import StrategySection
from fedtune.zo import pack_pairs, unpack_pairs

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

    ``k``: the seed pool's size (to read packed pairs); ``wire_dtype``: what the global arrays
    were cast to on the way down (the reference an update is measured from)."""

    def __init__(self, section: StrategySection, k: int, wire_dtype: type | None = None) -> None:
        self.section = section
        self.k = k
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
        if self.wire_dtype is not None:
            sent = {k: v.astype(self.wire_dtype).astype(np.float32) for k, v in sent.items()}
        norms = {i: n for i, r in enumerate(replies) if (n := self._norm(r, sent)) is not None}
        if not norms:
            return
        median = lower_median(list(norms.values()))
        limit = ratio * median
        for i, norm in norms.items():
            if norm > limit:
                self._scale(replies[i], sent, limit / norm)
                log.warning("scaled the update of %s down from norm %.4g to %.4g "
                            "(max-update-norm-ratio=%g x the round's median %.4g)", names[i],
                            norm, limit, ratio, median)

    # ---- one reply's update --------------------------------------------------------------
    def _norm(self, reply: Message, sent: Arrays) -> float | None:
        content = reply.content
        if "arrays" in content.array_records:
            total = 0.0
            for key, value in content.array_records["arrays"].items():
                y = value.numpy().astype(np.float64)
                total += float(np.sum((y - _reference(sent, key, y.shape)) ** 2))
            return float(np.sqrt(total))
        if "zo" in content.config_records and "pairs" in content.config_records["zo"]:
            _, scalars = unpack_pairs(content.config_records["zo"]["pairs"], self.k)
            return float(np.linalg.norm(scalars.astype(np.float64)))
        return None  # no update fedtune knows how to measure

    def _scale(self, reply: Message, sent: Arrays, scale: float) -> None:
        content = reply.content
        if "arrays" in content.array_records:
            scaled = {}
            for key, value in content.array_records["arrays"].items():
                y = value.numpy()
                x = _reference(sent, key, y.shape)
                scaled[key] = Array(np.ascontiguousarray(
                    (x + scale * (y.astype(np.float64) - x)).astype(y.dtype)))
            content["arrays"] = ArrayRecord(scaled)
            return
        record = content.config_records["zo"]
        indices, scalars = unpack_pairs(record["pairs"], self.k)
        record["pairs"] = pack_pairs(indices, (scalars.astype(np.float64) * scale)
                                     .astype(np.float32), self.k)


def _reference(sent: Arrays, key: str, shape: tuple[int, ...]) -> np.ndarray:
    """The global array ``key`` as float64 in the reply's ``shape``: zero-padded or cut where a
    node's rank differs (mixed LoRA ranks), zeros for a key the server did not send."""
    x = sent.get(key)
    if x is not None and tuple(x.shape) == tuple(shape):
        return np.asarray(x, np.float64)
    out = np.zeros(shape, np.float64)
    if x is not None and x.ndim == len(shape):
        overlap = tuple(slice(0, min(a, b)) for a, b in zip(x.shape, shape, strict=True))
        out[overlap] = x[overlap]
    return out
