"""What the strategies that wrap another one (differential privacy, secure aggregation) share:
delegation of evaluation, summary, checkpoint state and the round loop's hooks to the wrapped
strategy, the round's reference model as the clients see it, and moving one payload record
between a Flower message and plain Python."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedtune.algorithms.replies import Records
from fedtune.privacy.payloads import Payload, payload_for


def payload_records(content: Any, record: str) -> Records:
    """One record of a Flower message content, as plain Python."""
    if record in content.array_records:
        return Records(arrays={record: {k: v.numpy() for k, v in content[record].items()}})
    return Records(configs={record: dict(content.config_records[record])})


def write_back(content: Any, records: Records, record: str) -> None:
    """The plain-Python ``record`` of ``records`` into a Flower message content."""
    if record in records.arrays:
        content[record] = ArrayRecord({k: Array(np.ascontiguousarray(v))
                                       for k, v in records.arrays[record].items()})
    else:
        content[record] = ConfigRecord(records.configs[record])


class Wrapper(Strategy):
    """A strategy around ``inner``: everything it does not override goes to ``inner``."""

    def __init__(self, inner: Strategy, payload: str, k: int, wire_dtype: type | None) -> None:
        self.inner = inner
        self.kind = payload  # the update kind its algorithm uploads
        self.k = k  # FedKSeed's pool size (the seeds payload)
        self.wire_dtype = wire_dtype
        self.payload: Payload | None = None  # against the round's global model
        self.run_id = 0  # Flower's run id and the config's fingerprint (bind_run)
        self.fingerprint = ""

    def bind_run(self, run_id: int, fingerprint: str) -> None:
        """The run this strategy serves: Flower's ``run_id`` (SecAgg binds its keys to it) and
        the config's ``fingerprint`` (the same for a run and its resumption; DP separates the
        noise of different configs with it). Passed on to the wrapped strategy."""
        self.run_id, self.fingerprint = int(run_id), fingerprint
        bind = getattr(self.inner, "bind_run", None)
        if bind is not None:
            bind(run_id, fingerprint)

    def set_reference(self, arrays: ArrayRecord) -> None:
        """The round's payload against the global model as the clients receive it (after the
        wire's rounding), so a contribution is measured from what the client started from."""
        x = {k: v.numpy() for k, v in arrays.items()}
        if self.wire_dtype is not None:
            x = {k: v.astype(self.wire_dtype).astype(np.float32) for k, v in x.items()}
        self.payload = payload_for(self.kind, Records(arrays={"arrays": x}), self.k)

    # ---- the round loop's hooks ----------------------------------------------------------
    def admit_round(self, server_round: int, population: int, sample_size: int) -> str | None:
        gate = getattr(self.inner, "admit_round", None)
        return gate(server_round, population, sample_size) if gate is not None else None

    def round_report(self) -> dict[str, Any]:
        report = getattr(self.inner, "round_report", None)
        return report() if report is not None else {}

    def final_report(self) -> dict[str, Any]:
        final = getattr(self.inner, "final_report", None)
        return final() if final is not None else {}

    # ---- delegated -----------------------------------------------------------------------
    def summary(self) -> None:
        self.inner.summary()

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]
                           ) -> MetricRecord | None:
        return self.inner.aggregate_evaluate(server_round, replies)

    def state_dict(self) -> dict[str, np.ndarray]:
        return self.inner.state_dict()  # type: ignore[attr-defined]

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self.inner.load_state_dict(state)  # type: ignore[attr-defined]
