"""A client's reply as one vector for a secure sum, and a sum of such vectors as one reply.

Under secure aggregation the server sees only the sum over clients, so everything it needs
goes into the vector: the example-weighted contribution (the algorithm's payload,
:mod:`fedtune.payloads`: n x (y - x) for FedIT, n x the per-seed sums for FedKSeed), then
n, n x train-loss and how many of its values the quantiser clipped.
The sum divided by the sum of n is the weighted mean update and the weighted mean loss:
FedAvg's aggregate, without any client's n or loss.
"""

from __future__ import annotations

import numpy as np

from fedtune.payloads import Arrays, Payload
from fedtune.privacy.payloads import contribution
from fedtune.secagg.masking import dequantize, quantize
from fedtune.seeded import PRO_CLIP, unpack_pairs
from fedtune.wire import NUM_EXAMPLES, Records

EXTRA = 3  # n, n x train-loss and the clipped-value count after the contribution


def extra_range(bits: int) -> float:
    """The clip range of n and n x loss: 2^(bits-4), i.e. a quantisation step of 1/8 (an
    example count up to a million fits whatever the contribution's range)."""
    return float(2 ** (bits - 4))


def quantize_vector(vector: np.ndarray, clip_range: float, bits: int,
                    gen: np.random.Generator) -> np.ndarray:
    """The contribution quantised over +-``clip_range`` (the count of values beyond it goes in
    the last slot), n, n x loss and that count over their own range."""
    if not np.isfinite(vector).all():
        raise ValueError("the update is not finite; it is not uploaded")
    vector = vector.copy()
    vector[-1] = np.count_nonzero(np.abs(vector[:-EXTRA]) > clip_range)
    return np.concatenate([quantize(vector[:-EXTRA], clip_range, bits, gen),
                           quantize(vector[-EXTRA:], extra_range(bits), bits, gen)])


def dequantize_sum(total: np.ndarray, count: int, clip_range: float, bits: int) -> np.ndarray:
    """The float sum of ``count`` vectors from the sum of their quantised forms."""
    return np.concatenate([dequantize(total[:-EXTRA], count, clip_range, bits),
                           dequantize(total[-EXTRA:], count, extra_range(bits), bits)])


def rounding_margin(payload: Payload, reference: Arrays, clip_range: float, bits: int
                    ) -> float:
    """How far (L2) stochastic rounding can move a contribution: under one quantisation step
    per value. Under DP a node clips to C minus this, so that what the secure sum adds has
    norm <= C, the sensitivity the accountant assumes."""
    step = 2 * clip_range / (2**bits - 1)
    return step * float(np.sqrt(payload.size(reference)))


def vector_length(payload: Payload, reference: Arrays, pro: bool = False) -> int:
    """The secure-sum vector's length for a payload against the round's global model
    ``reference``; ``pro``: FedKSeed-Pro's per-seed statistics (2 K values) follow the
    contribution."""
    size = payload.size(reference)
    return size + (2 * size if pro else 0) + EXTRA


def pro_statistics(payload: Payload, reply: Records) -> np.ndarray:
    """FedKSeed-Pro's per-seed statistics of one reply: the sums of |clipped scalar| and the
    counts of draws (what :meth:`~fedtune.seeded.SeedPool.update` adds), 2 K values."""
    k = payload.pool_size
    if k is None:
        raise ValueError("FedKSeed-Pro's statistics need a seed payload")
    indices, scalars = unpack_pairs(reply.configs[payload.record]["pairs"], k)
    clipped = np.abs(np.clip(scalars.astype(np.float64), -PRO_CLIP, PRO_CLIP))
    return np.concatenate([np.bincount(indices, weights=clipped, minlength=k),
                           np.bincount(indices, minlength=k).astype(np.float64)])


def to_vector(payload: Payload, reply: Records, reference: Arrays, pro: bool = False,
              private: bool = False) -> np.ndarray:
    """[n x contribution, (Pro's statistics,) n, n x train-loss, 0] (float64) of a client's
    plain reply; with ``private`` (differential privacy) n is 1 and the loss 0: the sum then
    carries the clipped contributions and the public count only (the mechanism noises the
    contributions; nothing else may leave unnoised)."""
    metrics = reply.metrics["metrics"]
    n = 1.0 if private else float(metrics[NUM_EXAMPLES])
    update = contribution(payload, reply, reference)
    stats = pro_statistics(payload, reply) if pro else np.zeros(0)
    loss = 0.0 if private else float(metrics.get("train-loss", 0.0))
    return np.concatenate([n * update, stats, [n, n * loss, 0.0]])


def from_sum(payload: Payload, reference: Arrays, total: np.ndarray, pro: bool = False
             ) -> Records:
    """The one reply FedAvg would have computed: the weighted mean contribution written as the
    payload, ``num-examples`` = sum of n, ``train-loss`` = the weighted mean loss; the summed
    Pro statistics of a seed payload as ``pro-abs-sums``/``pro-counts`` in its record."""
    n = float(total[-3])
    if not n > 0:
        raise ValueError(f"the secure sum's example count is {n}, not positive")
    reply = Records(metrics={"metrics": {NUM_EXAMPLES: int(round(n)),
                                         "train-loss": float(total[-2]) / n}})
    size = payload.size(reference)
    record = payload.write({}, total[:size] / n, reference)
    if payload.pool_size is not None:  # its statistics come from here, not the mean
        stats = total[size:size + 2 * size] if pro else np.zeros(2 * size)
        record["pro-abs-sums"] = stats[:size].astype("<f8").tobytes()
        record["pro-counts"] = np.rint(stats[size:]).astype("<i8").tobytes()
    (reply.arrays if payload.array_record else reply.configs)[payload.record] = record
    return reply
