"""What crosses the wire, in plain Python: the records, the checks every reply passes before
aggregation, and the wire's 16-bit rounding. Below algorithms, strategies and privacy, so none
of them imports another for these; :mod:`fedtune.wire.flower` converts to and from Flower's
records and counts bytes (the one module here that imports Flower).

:class:`Records` mirrors a Flower ``RecordDict`` without Flower's types, so an algorithm builds
and checks its messages as numpy arrays and dicts. A reply
that would corrupt the global model (NaN/Inf, values at float16's limit or too large to square in
float32, missing or extra keys, wrong shapes or dtypes, fewer than one example) is rejected with
a reason; the round loop logs it with the node's
name and goes on without it (Flower's own strategies would stop the whole ServerApp).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

ALLOWED_DTYPES = ("float16", "float32")
NUM_EXAMPLES = "num-examples"  # the metric every reply weights itself by
#: |value| at which an array counts as overflowed: float16's largest finite value (a cast that
#: overflowed saturates there or becomes Inf), and for float32 the square root of its largest
#: (server optimizers such as FedAdam square updates; norms sum squares).
LIMITS = {"float16": float(np.finfo(np.float16).max),
          "float32": float(np.sqrt(np.finfo(np.float32).max))}


def to_wire(arrays: Mapping[str, np.ndarray], dtype: type | None) -> dict[str, np.ndarray]:
    """The arrays as they cross the wire: cast to ``dtype`` (FedIT: 16-bit), or unchanged."""
    return dict(arrays) if dtype is None else {k: v.astype(dtype) for k, v in arrays.items()}


def as_received(arrays: Mapping[str, np.ndarray], dtype: type | None) -> dict[str, np.ndarray]:
    """The arrays as a client reads them after the wire (float32 from ``dtype``'s rounding):
    the reference a client's update is measured from."""
    if dtype is None:
        return dict(arrays)
    return {k: v.astype(np.float32) for k, v in to_wire(arrays, dtype).items()}


@dataclass
class Records:
    """Named array records, config records and metric records of one message."""

    arrays: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)


def check_metrics(content: Records, weight_key: str = NUM_EXAMPLES) -> str | None:
    """``None`` when the ``metrics`` record has a weight of at least 1 and only finite scalar
    values (a count below one is no example count, and FedKSeed's ``int`` would make it 0)."""
    if "metrics" not in content.metrics:
        return "no 'metrics' record"
    metrics = content.metrics["metrics"]
    weight = metrics.get(weight_key)
    if (isinstance(weight, bool) or not isinstance(weight, int | float)
            or not math.isfinite(weight) or weight < 1):
        return f"'{weight_key}' is {weight!r}, not a positive number of examples (at least 1)"
    for key, value in metrics.items():
        # fedtune's clients send scalars; a list would make the strategy's metric averaging
        # fail (or mix lengths) across replies, so it is a bad reply, not a round's crash
        if isinstance(value, list) or not isinstance(value, int | float):
            return f"metric '{key}' is {type(value).__name__}, not a number"
        if not math.isfinite(float(value)):
            return f"metric '{key}' is not finite"
    return None


def check_arrays(arrays: Mapping[str, np.ndarray], spec: Mapping[str, tuple[int, ...]]
                 ) -> str | None:
    """``None`` when ``arrays`` has exactly ``spec``'s keys and shapes, 16/32-bit floats, all
    finite and below their dtype's :data:`LIMITS`."""
    missing, extra = set(spec) - set(arrays), set(arrays) - set(spec)
    if missing or extra:
        return (f"adapter keys differ ({len(missing)} missing, e.g. {sorted(missing)[:1]}; "
                f"{len(extra)} extra, e.g. {sorted(extra)[:1]})")
    for key, shape in spec.items():
        arr = arrays[key]
        if tuple(arr.shape) != tuple(shape):
            return f"'{key}' has shape {tuple(arr.shape)}, expected {tuple(shape)}"
        if arr.dtype.name not in ALLOWED_DTYPES:
            return f"'{key}' has dtype {arr.dtype.name}, expected one of {ALLOWED_DTYPES}"
        if not np.isfinite(arr).all():
            return f"'{key}' contains NaN or Inf"
        limit = LIMITS[arr.dtype.name]
        if arr.size and float(np.max(np.abs(arr))) >= limit:
            return f"'{key}' has a value of magnitude >= {limit:.4g} ({arr.dtype.name} overflow)"
    return None


def check_record(content: Records, name: str, spec: Mapping[str, tuple[int, ...]]
                 ) -> str | None:
    """The array record ``name`` is present and matches ``spec``."""
    if name not in content.arrays:
        return f"no '{name}' record"
    return check_arrays(content.arrays[name], spec)
