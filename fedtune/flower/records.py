"""Python objects <-> Flower records, and measured wire bytes."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, RecordDict
from flwr.common.serde import recorddict_to_proto


def to_arrayrecord(arrays: Mapping[str, np.ndarray], dtype: type | None = None) -> ArrayRecord:
    """Named numpy arrays -> ArrayRecord, optionally cast (e.g. float16 for the wire)."""
    return ArrayRecord(
        {k: Array(np.ascontiguousarray(v if dtype is None else v.astype(dtype)))
         for k, v in arrays.items()}
    )


def from_arrayrecord(record: ArrayRecord, dtype: type = np.float32) -> dict[str, np.ndarray]:
    """ArrayRecord -> named numpy arrays in ``dtype`` (float32: the aggregation precision)."""
    return {k: v.numpy().astype(dtype, copy=False) for k, v in record.items()}


def content_bytes(content: RecordDict) -> int:
    """Size of the serialized message content: what crosses the wire for this message."""
    return recorddict_to_proto(content).ByteSize()
