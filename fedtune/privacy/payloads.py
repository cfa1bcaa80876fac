"""What one client contributes to a round, per payload kind, as one flat float64 vector.

- ``arrays`` (FedIT, full-ft): the update y - x over every array of the ``arrays`` record, x
  the global model as the client received it (after the wire's rounding), keys in x's order.
- ``seeds`` (FedKSeed): the dense K-vector of the client's scalars summed per seed index (a
  seed drawn twice contributes the sum of its two scalars), from the ``zo`` record's pairs.

Each payload can also rebuild a reply from a vector (the server hands the strategy the noisy
mean this way) and scale a client's reply (client-side clipping).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fedtune.algorithms.replies import Records
from fedtune.privacy.mechanism import l2_norm, shrink_to_bound
from fedtune.zo import pack_pairs, unpack_pairs


class ArraysPayload:
    """A reply's ``arrays`` record against the global arrays ``x``."""

    record = "arrays"

    def __init__(self, x: Mapping[str, np.ndarray]) -> None:
        self.x = {k: np.asarray(v, dtype=np.float64) for k, v in x.items()}

    def contribution(self, reply: Records) -> np.ndarray:
        y = reply.arrays[self.record]
        if set(y) != set(self.x):
            raise ValueError("the reply's arrays do not match the global model's keys")
        return np.concatenate([(np.asarray(y[k], dtype=np.float64) - x).ravel()
                               for k, x in self.x.items()]) if self.x else np.zeros(0)

    def _split(self, vec: np.ndarray) -> dict[str, np.ndarray]:
        out, start = {}, 0
        for k, x in self.x.items():
            out[k] = vec[start:start + x.size].reshape(x.shape)
            start += x.size
        return out

    def write(self, reply: Records, vec: np.ndarray, dtype: type = np.float32) -> None:
        """The reply's arrays become x + ``vec`` (in ``dtype``)."""
        reply.arrays[self.record] = {k: (self.x[k] + d).astype(dtype)
                                     for k, d in self._split(vec).items()}

    def scaled(self, reply: Records, scale: float) -> Records:
        """A copy of the reply whose update is ``scale`` times the original (in its dtype)."""
        y = reply.arrays[self.record]
        arrays = {k: (x + scale * (np.asarray(y[k], np.float64) - x)).astype(y[k].dtype)
                  for k, x in self.x.items()}
        return Records({**reply.arrays, self.record: arrays}, reply.configs, reply.metrics)


class SeedsPayload:
    """A reply's packed (seed index, scalar) pairs over a pool of ``k`` seeds."""

    record = "zo"

    def __init__(self, k: int) -> None:
        self.k = k

    def contribution(self, reply: Records) -> np.ndarray:
        indices, scalars = unpack_pairs(reply.configs[self.record]["pairs"], self.k)
        return np.bincount(indices, weights=scalars.astype(np.float64), minlength=self.k)

    def write(self, reply: Records, vec: np.ndarray) -> None:
        """The reply's pairs become one (s, vec[s]) per seed of the pool."""
        reply.configs[self.record] = {
            **reply.configs.get(self.record, {}),
            "pairs": pack_pairs(np.arange(self.k), vec.astype(np.float32), self.k)}

    def scaled(self, reply: Records, scale: float) -> Records:
        indices, scalars = unpack_pairs(reply.configs[self.record]["pairs"], self.k)
        pairs = pack_pairs(indices, (scalars * np.float32(scale)).astype(np.float32), self.k)
        configs = {**reply.configs, self.record: {**reply.configs[self.record], "pairs": pairs}}
        return Records(reply.arrays, configs, reply.metrics)


Payload = ArraysPayload | SeedsPayload


def payload_for(kind: str, received: Records, k: int) -> Payload:
    """The payload of an algorithm uploading ``kind``, against what the client ``received``
    (its ``arrays`` record as float32, as the client reads it) or the pool size ``k``."""
    if kind == "seeds":
        return SeedsPayload(k)
    if kind == "arrays":
        return ArraysPayload({key: np.asarray(v).astype(np.float32)
                              for key, v in received.arrays["arrays"].items()})
    raise ValueError(f"differential privacy does not know the payload '{kind}'")


def clip_reply(kind: str, reply: Records, received: Records, bound: float, k: int) -> Records:
    """Client-side clipping: the reply scaled so that its contribution, as the server will
    compute it from the bytes sent, has L2 norm <= ``bound``."""
    payload = payload_for(kind, received, k)

    def norm_of(r: Records) -> float:
        return l2_norm(payload.contribution(r))

    return shrink_to_bound(lambda s: payload.scaled(reply, s), norm_of, norm_of(reply), bound)
