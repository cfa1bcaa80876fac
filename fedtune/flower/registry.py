"""The nodes of a run, named by something stable: Flower's node ids change when a node
reconnects; fedtune samples, logs and reports by the name a node gives when asked
(``identify``): its partition in simulation, its ``node-name`` in deployment."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

log = logging.getLogger("fedtune")

IDENTIFY = "query.identify"
IDENTIFY_BATCH = 64  # identify messages in flight at once (see NodeRegistry._identify)
WAIT_FOR_NODES = 300.0  # s the first round waits for min-available-nodes to connect


@dataclass
class NodeRegistry:
    """Flower node id -> stable name (partition id in simulation, node-name in deployment).

    A node that takes a name another connected node already holds is excluded for the rest of
    the run (logged once); a node that refuses to identify itself (e.g. it has no data) is
    asked again at the next refresh and logged when its reason changes."""

    grid: Grid
    timeout: float
    names: dict[int, str] = field(default_factory=dict)
    excluded: dict[int, str] = field(default_factory=dict)  # node id -> the name it duplicated
    refused: dict[int, str] = field(default_factory=dict)  # node id -> why it did not identify
    _early: threading.Thread | None = None
    _early_error: BaseException | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    def refresh_early(self, min_nodes: int, wait: float) -> None:
        """Start the first (strict) :meth:`refresh` in a background thread, so the nodes
        identify themselves while the server builds its model and evaluates round 0 (a
        simulation actor then imports and loads in the meantime, not in round 1); the next
        :meth:`refresh` waits for it and raises its error. The caller uses the grid for nothing
        else until then, and calls :meth:`stop` if it gives up before."""

        def work() -> None:
            try:
                self.refresh(min_nodes, wait)
            except BaseException as err:  # noqa: BLE001 - raised again by the next refresh
                self._early_error = err

        self._early = threading.Thread(target=work, name="fedtune-identify", daemon=True)
        self._early.start()

    def stop(self) -> None:
        """End an early refresh's wait for nodes (the run failed before its first round)."""
        self._stop.set()

    def refresh(self, min_nodes: int, wait: float, strict: bool = True) -> None:
        """Wait (up to ``wait`` s) for ``min_nodes`` nodes, then ask new nodes for their name.

        Past the deadline, raise if ``strict``; else go on with the nodes that are connected
        (a node lost mid-run must not stop the run: its rounds are then skipped). After
        :meth:`refresh_early`, the first call is the early one's result."""
        if self._early is not None and threading.current_thread() is not self._early:
            early, self._early = self._early, None
            early.join()
            if self._early_error is not None:
                err, self._early_error = self._early_error, None
                raise err
            return
        deadline = time.monotonic() + wait
        while len(ids := list(self.grid.get_node_ids())) < min_nodes:
            if time.monotonic() > deadline and not strict:
                log.warning("only %d of the %d nodes needed are connected", len(ids), min_nodes)
                break
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"only {len(ids)} of the {min_nodes} nodes needed connected within "
                    f"{wait:.0f} s; start more SuperNodes or lower min-available-nodes"
                )
            if self._stop.wait(0.5):
                return
        new = [i for i in ids if i not in self.names and i not in self.excluded]
        if not new:
            return
        for reply in self._identify(new):
            node_id = reply.metadata.src_node_id
            if reply.has_error() or "node" not in reply.content.config_records:
                reason = reply.error.reason if reply.has_error() else "no 'node' record"
                if self.refused.get(node_id) != reason:
                    log.warning("node %d did not identify itself (%s); it will not be sampled",
                                node_id, reason)
                self.refused[node_id] = reason
                continue
            self.refused.pop(node_id, None)
            self._register(node_id, str(reply.content.config_records["node"]["name"]), set(ids))

    def _identify(self, new: list[int]) -> Iterable[Message]:
        """Ask ``new`` nodes for their names, :data:`IDENTIFY_BATCH` at a time within one
        round-timeout. Flower's simulation engine scans every queued message once per node
        every 0.1 s, so 1,000 messages at once cost 1,000 x 1,000 scans per pass."""
        deadline = time.monotonic() + self.timeout
        for start in range(0, len(new), IDENTIFY_BATCH):
            msgs = [Message(content=RecordDict({"config": ConfigRecord({})}), dst_node_id=i,
                            message_type=IDENTIFY) for i in new[start:start + IDENTIFY_BATCH]]
            yield from self.grid.send_and_receive(
                msgs, timeout=max(1.0, deadline - time.monotonic()))

    def _register(self, node_id: int, name: str, live: set[int]) -> None:
        """``name`` for ``node_id``, unless a connected node holds it already."""
        holder = next((i for i, n in self.names.items() if n == name), None)
        if holder is not None and holder in live:
            self.excluded[node_id] = name
            log.warning("node %d also calls itself '%s' (node %d does); it is excluded from "
                        "this run: give each SuperNode a unique node-name", node_id, name, holder)
            return
        if holder is not None:  # the name's holder left: the new node takes its place
            del self.names[holder]
        self.names[node_id] = name

    def sorted_ids(self) -> list[int]:
        live = set(self.grid.get_node_ids())
        return sorted([i for i in self.names if i in live], key=self.names.__getitem__)

    def name(self, node_id: int) -> str:
        return self.names.get(node_id, f"node-{node_id}")
