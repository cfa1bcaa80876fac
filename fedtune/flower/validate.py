"""Validate client replies before any aggregation touches them.

A reply that would corrupt the global model (NaN/Inf, missing or extra keys, wrong shapes or
dtypes, a non-positive example count) is rejected with a reason; the caller logs it with the
node's name and the round goes on without it. Flower's own strategies stop the whole ServerApp
on inconsistent replies, so this runs first.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from flwr.app import ArrayRecord, RecordDict

ALLOWED_DTYPES = ("float16", "float32")


def check_metrics(content: RecordDict, weight_key: str) -> str | None:
    if "metrics" not in content.metric_records:
        return "no 'metrics' record"
    metrics = content.metric_records["metrics"]
    weight = metrics.get(weight_key)
    if not isinstance(weight, int | float) or not math.isfinite(weight) or weight <= 0:
        return f"'{weight_key}' is {weight!r}, not a positive number"
    for key, value in metrics.items():
        values = value if isinstance(value, list) else [value]
        if any(not math.isfinite(float(v)) for v in values):
            return f"metric '{key}' is not finite"
    return None


def check_arrays(record: ArrayRecord, spec: Mapping[str, tuple[int, ...]]) -> str | None:
    missing, extra = set(spec) - set(record), set(record) - set(spec)
    if missing or extra:
        return (f"adapter keys differ ({len(missing)} missing, e.g. {sorted(missing)[:1]}; "
                f"{len(extra)} extra, e.g. {sorted(extra)[:1]})")
    for key, shape in spec.items():
        arr = record[key]
        if tuple(arr.shape) != tuple(shape):
            return f"'{key}' has shape {tuple(arr.shape)}, expected {tuple(shape)}"
        if arr.dtype not in ALLOWED_DTYPES:
            return f"'{key}' has dtype {arr.dtype}, expected one of {ALLOWED_DTYPES}"
        if not np.isfinite(arr.numpy()).all():
            return f"'{key}' contains NaN or Inf"
    return None


def check_train_reply(content: RecordDict, spec: Mapping[str, tuple[int, ...]],
                      weight_key: str = "num-examples") -> str | None:
    """``None`` when the reply is safe to aggregate, else the reason to drop it."""
    if "arrays" not in content.array_records:
        return "no 'arrays' record"
    return check_arrays(content.array_records["arrays"], spec) or check_metrics(content, weight_key)


def check_zo_reply(content: RecordDict, k: int, steps: int) -> str | None:
    """A FedKSeed reply: exactly ``steps`` (seed index < K, finite scalar) pairs, packed."""
    from fedtune.zo import unpack_pairs

    record = content.config_records.get("zo")
    if record is None or not isinstance(record.get("pairs"), bytes):
        return "no 'zo' record with packed 'pairs' bytes"
    try:
        indices, _ = unpack_pairs(record["pairs"], k)
    except ValueError as err:
        return f"bad seed pairs: {err}"
    if len(indices) != steps:
        return f"{len(indices)} seed pairs, expected zo-steps={steps}"
    return check_metrics(content, "num-examples")
