"""The wire's plain-Python records (:mod:`fedtune.wire`) <-> Flower's records, and measured
wire bytes: done once here for the runtime and the strategies (which may not import the
runtime)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.common.serde import recorddict_to_proto

from fedtune.wire import Records, to_wire


def to_arrayrecord(arrays: Mapping[str, np.ndarray], dtype: type | None = None) -> ArrayRecord:
    """Named numpy arrays -> ArrayRecord, optionally cast (e.g. float16 for the wire)."""
    return ArrayRecord({k: Array(np.ascontiguousarray(v))
                        for k, v in to_wire(arrays, dtype).items()})


def from_arrayrecord(record: ArrayRecord, dtype: type = np.float32) -> dict[str, np.ndarray]:
    """ArrayRecord -> named numpy arrays in ``dtype`` (float32: the aggregation precision)."""
    return {k: v.numpy().astype(dtype, copy=False) for k, v in record.items()}


def content_bytes(content: RecordDict) -> int:
    """Size of the serialized message content: what crosses the wire for this message."""
    return recorddict_to_proto(content).ByteSize()


def payload_bytes(content: RecordDict) -> int:
    """Bytes of data the content carries: array buffers and ``bytes`` config values (no keys,
    dtypes, shapes or protobuf framing). FedKSeed's "under 18 KB" counts exactly these."""
    arrays = sum(len(a.data) for rec in content.array_records.values() for a in rec.values())
    blobs = sum(len(v) for rec in content.config_records.values() for v in rec.values()
                if isinstance(v, bytes))
    return arrays + blobs


def to_records(content: RecordDict) -> Records:
    """A Flower RecordDict as plain Python (arrays as numpy, in their wire dtype)."""
    return Records(
        arrays={name: {k: v.numpy() for k, v in rec.items()}
                for name, rec in content.array_records.items()},
        configs={name: dict(rec) for name, rec in content.config_records.items()},
        metrics={name: dict(rec) for name, rec in content.metric_records.items()})


def to_recorddict(records: Records) -> RecordDict:
    """Inverse of :func:`to_records`; arrays travel in the dtype the algorithm gave them."""
    out: dict[str, ArrayRecord | ConfigRecord | MetricRecord] = {}
    out.update({name: to_arrayrecord(arrays) for name, arrays in records.arrays.items()})
    out.update({name: ConfigRecord(values) for name, values in records.configs.items()})
    out.update({name: MetricRecord(values) for name, values in records.metrics.items()})
    return RecordDict(out)


def read_record(content: RecordDict, name: str, arrays: bool) -> dict[str, Any] | None:
    """One record of a message content in plain Python: an array record (``arrays``) as
    name -> ndarray in its wire dtype, else a config record as a dict; None if it has none."""
    if arrays:
        found = content.array_records.get(name)
        return None if found is None else {k: v.numpy() for k, v in found.items()}
    config = content.config_records.get(name)
    return None if config is None else dict(config)


def write_record(content: RecordDict, name: str, record: Mapping[str, Any],
                 arrays: bool) -> None:
    """The plain-Python ``record`` into a message content as ``name``: an array record when
    ``arrays``, else a config record."""
    content[name] = to_arrayrecord(record) if arrays else ConfigRecord(dict(record))
