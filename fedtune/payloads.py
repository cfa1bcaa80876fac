"""What one client's reply contributes to a round, one object per payload kind.

An algorithm names its payload on both sides (``payload`` of its server side and, where it is
not named arrays, of its client side; :func:`payload_of`). The trust policy
(:mod:`fedtune.strategies.trust`), differential privacy (:mod:`fedtune.strategies.dp`, client
clipping in :mod:`fedtune.privacy.clipping`) and secure aggregation (:mod:`fedtune.privacy.sums`)
read a reply's update only through it, never through a kind string or the run config.

A payload reads one record of a reply in plain Python (an array record as name -> ndarray, a
config record as name -> value), never Flower's types, against ``reference``: the round's global
arrays as the clients received them (after the wire's rounding, :func:`fedtune.wire.as_received`).
It owns

- ``record`` (and ``array_record``: whether it is an array record or a config record),
- ``kind``: the update kind the strategies aggregate (``arrays`` or ``seeds``),
- ``pool_size``: entries of a seed payload's contribution (None for arrays),
- ``default_clip_norm``: DP's clipping bound C when ``dp-clip-norm`` is 0, near the clients'
  typical norms in the default runs (measured: FedIT's adapter updates 8.8 in round 1 down to
  1.0 by round 6; FedKSeed's per-seed sums 130 to 240), so clipping binds without discarding
  most of the signal; ``default_clip_range``: SecAgg's largest |value| of a client's vector when
  ``secagg-clip-range`` is 0 (FedIT sends n x its adapter update, n its example count;
  FedKSeed n x its per-seed sums),
- :meth:`contribution`: the update as one flat float64 vector (what DP clips and noises and
  SecAgg sums), of length :meth:`size`,
- :meth:`write`: the record whose update is a given vector (DP's noisy mean, SecAgg's mean),
- :meth:`norm`: how far the update moves the model (the trust policy's measure),
- :meth:`scaled`: a copy whose update is scaled by ``s`` (``linear``: its norm scales by
  exactly ``s``; else :func:`shrink` searches the scale).

Payloads here: :class:`ArraysPayload` (named float arrays: the reply minus the reference),
:class:`SeedsPayload` (FedKSeed's (seed index, scalar) pairs: the per-seed sums, which is what
moves the model, not the scalars) and :class:`BlockSeedsPayload` (Ferret's (block x seed)
coefficients: the per-entry sums, weighted by each block's size). FedIT's exact LoRA variants
have their own (:mod:`fedtune.algorithms.fedit.payload`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from fedtune.wire import Records

Record = Mapping[str, Any]
Arrays = Mapping[str, np.ndarray]


class Payload(Protocol):
    """How to read, measure and scale one client's update (see the module docstring)."""

    kind: str
    record: str
    array_record: bool
    pool_size: int | None
    linear: bool
    default_clip_norm: float
    default_clip_range: float

    def contribution(self, record: Record, reference: Arrays) -> np.ndarray: ...

    def size(self, reference: Arrays) -> int: ...

    def write(self, record: Record, vector: np.ndarray, reference: Arrays) -> dict[str, Any]: ...

    def norm(self, record: Record, reference: Arrays) -> float: ...

    def scaled(self, record: Record, reference: Arrays, scale: float) -> dict[str, Any]: ...


def reference_for(reference: Arrays, key: str, shape: tuple[int, ...]) -> np.ndarray:
    """The reference array ``key`` as float64 in the reply's ``shape``: zero-padded or cut
    where a node's rank differs (mixed LoRA ranks), zeros for a key the server did not send."""
    x = reference.get(key)
    if x is not None and tuple(x.shape) == tuple(shape):
        return np.asarray(x, np.float64)
    out = np.zeros(shape, np.float64)
    if x is not None and x.ndim == len(shape):
        overlap = tuple(slice(0, min(a, b)) for a, b in zip(x.shape, shape, strict=True))
        out[overlap] = x[overlap]
    return out


@dataclass(frozen=True)
class ArraysPayload:
    """Named float arrays (FedIT's adapter, full fine-tuning): the update is the reply minus
    the reference, key by key; its norm the L2 norm over all of them."""

    record: str = "arrays"
    kind = "arrays"
    array_record = True
    pool_size = None
    linear = True
    default_clip_norm = 1.0
    default_clip_range = 64.0

    @staticmethod
    def _shapes(record: Record, reference: Arrays) -> dict[str, tuple[int, ...]]:
        """The contribution's layout: the reference's keys and shapes, in its order, when the
        record has the same keys (or is empty: a sum has no reply); else the record's own."""
        if not record or set(record) == set(reference):
            return {k: tuple(np.shape(v)) for k, v in reference.items()}
        return {k: tuple(np.shape(v)) for k, v in record.items()}

    def contribution(self, record: Record, reference: Arrays) -> np.ndarray:
        parts = [(np.asarray(record[k], np.float64) - reference_for(reference, k, shape)).ravel()
                 for k, shape in self._shapes(record, reference).items()]
        return np.concatenate(parts) if parts else np.zeros(0)

    def size(self, reference: Arrays) -> int:
        return int(sum(np.size(v) for v in reference.values()))

    def write(self, record: Record, vector: np.ndarray, reference: Arrays,
              dtype: type = np.float32) -> dict[str, Any]:
        """The record whose arrays are the reference + ``vector`` (in ``dtype``)."""
        out, start = {}, 0
        for k, shape in self._shapes(record, reference).items():
            n = int(np.prod(shape))
            out[k] = (reference_for(reference, k, shape)
                      + vector[start:start + n].reshape(shape)).astype(dtype)
            start += n
        return out

    def norm(self, record: Record, reference: Arrays) -> float:
        total = 0.0
        for key, value in record.items():
            y = np.asarray(value, np.float64)
            total += float(np.sum((y - reference_for(reference, key, y.shape)) ** 2))
        return float(np.sqrt(total))

    def scaled(self, record: Record, reference: Arrays, scale: float) -> dict[str, Any]:
        out = {}
        for key, y in record.items():
            x = reference_for(reference, key, y.shape)
            out[key] = np.ascontiguousarray(
                (x + scale * (np.asarray(y, np.float64) - x)).astype(y.dtype))
        return out


@dataclass(frozen=True)
class SeedsPayload:
    """FedKSeed's packed (seed index, scalar) pairs over a pool of ``pool_size`` seeds.

    The model moves by lr * sum_s c_s z(s) with c_s the sum of the client's scalars of seed s,
    and the z(s) are near-orthogonal, so the update's norm is ||c|| (times lr ||z||), not the
    norm of the scalars: a client repeating one seed tau times moves the model sqrt(tau) times
    further than its scalars' norm says."""

    pool_size: int
    record: str = "zo"
    kind = "seeds"
    array_record = False
    linear = True
    default_clip_norm = 100.0
    default_clip_range = 65536.0

    def pairs(self, record: Record) -> tuple[np.ndarray, np.ndarray]:
        from fedtune.seeded.pool import unpack_pairs  # (torch: only where a reply is read)

        return unpack_pairs(record["pairs"], self.pool_size)

    def contribution(self, record: Record, reference: Arrays) -> np.ndarray:
        """The dense per-entry sums c (length ``pool_size``)."""
        indices, scalars = self.pairs(record)
        return np.bincount(indices, weights=scalars.astype(np.float64),
                           minlength=self.pool_size)

    def size(self, reference: Arrays) -> int:
        return self.pool_size

    def write(self, record: Record, vector: np.ndarray, reference: Arrays) -> dict[str, Any]:
        """The record whose pairs are one (s, vector[s]) per entry of the pool."""
        from fedtune.seeded.pool import pack_pairs

        return {**record, "pairs": pack_pairs(np.arange(self.pool_size),
                                              vector.astype(np.float32), self.pool_size)}

    def norm(self, record: Record, reference: Arrays) -> float:
        return float(np.linalg.norm(self.contribution(record, reference)))

    def scaled(self, record: Record, reference: Arrays, scale: float) -> dict[str, Any]:
        """The scalars times ``scale`` in float32 arithmetic."""
        indices, scalars = self.pairs(record)
        from fedtune.seeded.pool import pack_pairs

        pairs = pack_pairs(indices, (scalars * np.float32(scale)).astype(np.float32),
                           self.pool_size)
        return {**record, "pairs": pairs}


@dataclass(frozen=True, eq=False)
class BlockSeedsPayload(SeedsPayload):
    """Ferret's packed (entry, coefficient) pairs, entry = b * seeds + k for block b, seed k.

    Block b reconstructs sum_k c_bk z_k restricted to its d_b weights, whose expected squared
    norm is sigma2 d_b sum_k c_bk^2; ``block_weights[b]`` = sqrt(sigma2 d_b), so :meth:`norm`
    is the expected norm of the reconstructed update in weight units (before the server lr),
    and a client cannot buy reach by moving its coefficients into the largest block."""

    seeds: int = 0
    block_weights: Sequence[float] = field(default_factory=tuple)

    @classmethod
    def of(cls, seeds: int, block_sizes: Sequence[int], sigma2: float) -> BlockSeedsPayload:
        weights = tuple(float(np.sqrt(sigma2 * n)) for n in block_sizes)
        return cls(pool_size=seeds * len(weights), seeds=seeds, block_weights=weights)

    def norm(self, record: Record, reference: Arrays) -> float:
        c = self.contribution(record, reference).reshape(len(self.block_weights), self.seeds)
        return float(np.linalg.norm(c * np.asarray(self.block_weights)[:, None]))


def payload_of(side: Any) -> Payload:
    """The payload an algorithm's server or client side declares (``payload``), else named
    arrays."""
    payload = getattr(side, "payload", None)
    return payload if payload is not None else ArraysPayload()


def record_of(payload: Payload, records: Records) -> dict[str, Any] | None:
    """The payload's record of a plain-Python message, or None if it has none."""
    found = (records.arrays if payload.array_record else records.configs).get(payload.record)
    return None if found is None else dict(found)


def with_record(payload: Payload, records: Records, record: Record) -> Records:
    """A copy of ``records`` whose payload record is ``record`` (the other records shared)."""
    if payload.array_record:
        return Records({**records.arrays, payload.record: dict(record)}, records.configs,
                       records.metrics)
    return Records(records.arrays, {**records.configs, payload.record: dict(record)},
                   records.metrics)


def shrink(payload: Payload, record: Record, reference: Arrays, norm: float, limit: float,
           steps: int = 40) -> dict[str, Any]:
    """A copy of ``record`` whose update has norm <= ``limit`` (``norm``: its norm now, above
    ``limit``): scaled by limit / norm when the payload is linear, else by the largest scale
    in [0, 1] that a bisection of ``steps`` steps finds to keep the norm within the limit."""
    if payload.linear:
        return payload.scaled(record, reference, limit / norm)
    lo, hi = 0.0, 1.0
    best = payload.scaled(record, reference, 0.0)
    for _ in range(steps):
        mid = (lo + hi) / 2
        candidate = payload.scaled(record, reference, mid)
        if payload.norm(candidate, reference) <= limit:
            lo, best = mid, candidate
        else:
            hi = mid
    return best


#: the payload class of each update kind (an Algorithm's ``payload``), for what the config
#: checks before any server side exists (the default clipping bounds)
KINDS: dict[str, type] = {"arrays": ArraysPayload, "seeds": SeedsPayload}
