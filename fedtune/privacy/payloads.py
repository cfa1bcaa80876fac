"""A node's side of its payload under differential privacy: the reference its update is
measured from, the contribution of a plain-Python reply, and client-side clipping.

The payload itself (what the update is, its vector, how it scales) is the algorithm's
(:mod:`fedtune.payloads`); nothing here looks at a kind string or the run config.
"""

from __future__ import annotations

import numpy as np

from fedtune.payloads import Arrays, Payload, record_of, with_record
from fedtune.privacy.mechanism import l2_norm, shrink_to_bound
from fedtune.wire import Records

GLOBAL = "arrays"  # the record of the global model in a train message


def reference_of(received: Records) -> dict[str, np.ndarray]:
    """The global arrays a client received, as float32 (what it read after the wire)."""
    return {k: np.asarray(v).astype(np.float32)
            for k, v in received.arrays.get(GLOBAL, {}).items()}


def contribution(payload: Payload, reply: Records, reference: Arrays) -> np.ndarray:
    """A reply's contribution (:meth:`~fedtune.payloads.Payload.contribution`)."""
    record = record_of(payload, reply)
    if record is None:
        raise ValueError(f"the reply has no '{payload.record}' record")
    return payload.contribution(record, reference)


def clip_reply(payload: Payload, reply: Records, reference: Arrays, bound: float) -> Records:
    """Client-side clipping: the reply scaled so that its contribution, as the server will
    compute it from the bytes sent, has L2 norm <= ``bound``."""
    record = record_of(payload, reply)
    if record is None:
        raise ValueError(f"the reply has no '{payload.record}' record")

    def norm_of(r: Records) -> float:
        return l2_norm(contribution(payload, r, reference))

    return shrink_to_bound(
        lambda s: with_record(payload, reply, payload.scaled(record, reference, s)),
        norm_of, norm_of(reply), bound)
