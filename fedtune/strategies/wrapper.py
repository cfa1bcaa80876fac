"""What the strategies that wrap another one (trust policy, differential privacy, secure
aggregation) share: delegation of evaluation, summary, checkpoint state and the round loop's
hooks to the wrapped strategy, the round's reference model as the clients see it, and moving
the payload's record between a Flower message and plain Python (:mod:`fedtune.wire.flower`)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedtune.payloads import Payload
from fedtune.strategies.hooks import StrategyHooks, hooks_of
from fedtune.wire import Records, as_received
from fedtune.wire.flower import from_arrayrecord, read_record, write_record


class Wrapper(StrategyHooks, Strategy):
    """A strategy around ``inner``: everything it does not override goes to ``inner``.

    ``payload``: the algorithm's (its server side's ``payload``, :mod:`fedtune.payloads`);
    ``wire_dtype``: what the global arrays are cast to on the way down."""

    def __init__(self, inner: Strategy, payload: Payload, wire_dtype: type | None) -> None:
        self.inner = inner
        self.payload = payload
        self.wire_dtype = wire_dtype
        self.reference: dict[str, np.ndarray] | None = None  # the round's global model
        self.run_id = 0  # Flower's run id and the config's fingerprint (bind_run)
        self.fingerprint = ""

    def bind_run(self, run_id: int, fingerprint: str) -> None:
        """The run this strategy serves: Flower's ``run_id`` (SecAgg binds its keys to it) and
        the config's ``fingerprint`` (the same for a run and its resumption; DP separates the
        noise of different configs with it). Passed on to the wrapped strategy."""
        self.run_id, self.fingerprint = int(run_id), fingerprint
        hooks_of(self.inner).bind_run(run_id, fingerprint)

    def set_reference(self, arrays: ArrayRecord) -> None:
        """The round's global model as the clients receive it (after the wire's rounding), so
        a contribution is measured from what the client started from."""
        self.reference = as_received(from_arrayrecord(arrays), self.wire_dtype)

    def read(self, content: Any) -> dict[str, Any]:
        """The payload's record of a Flower message content, in plain Python."""
        record = read_record(content, self.payload.record, self.payload.array_record)
        if record is None:
            raise ValueError(f"the reply has no '{self.payload.record}' record")
        return record

    def write(self, content: Any, record: dict[str, Any]) -> None:
        """The payload's plain-Python ``record`` into a Flower message content."""
        write_record(content, self.payload.record, record, self.payload.array_record)

    # ---- the round loop's hooks ----------------------------------------------------------
    def admit_round(self, server_round: int, population: int, sample_size: int) -> str | None:
        return hooks_of(self.inner).admit_round(server_round, population, sample_size)

    def check_reply(self, content: Records) -> str | None:
        return hooks_of(self.inner).check_reply(content)

    def screen(self, replies: list[Any], names: list[str], sent: Any) -> None:
        hooks_of(self.inner).screen(replies, names, sent)

    def weigh_evaluate(self, replies: list[Any], names: list[str]) -> None:
        hooks_of(self.inner).weigh_evaluate(replies, names)

    def release_sum(self, server_round: int, reply: Any, total: Any) -> Any | None:
        return hooks_of(self.inner).release_sum(server_round, reply, total)

    def round_report(self) -> dict[str, Any]:
        return hooks_of(self.inner).round_report()

    def final_report(self) -> dict[str, Any]:
        return hooks_of(self.inner).final_report()

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
