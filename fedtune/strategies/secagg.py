"""Secure aggregation (SecAgg+: Bonawitz et al., CCS 2017; Bell et al., CCS 2020) on Flower's
Message API, around any strategy that needs only the sum of the updates.

Flower 1.42 runs SecAgg+ only on its legacy workflow; here the protocol (:mod:`fedtune.secagg`)
runs as extra message exchanges inside a round of fedtune's own loop:

1. ``configure_train`` asks each sampled node for two public keys (``setup``), sends each the
   keys of its neighbours and collects its Shamir shares of its mask seed and mask key,
   encrypted for each neighbour (``share``), then sends the train messages, each carrying the
   ciphertexts addressed to that node.
2. A node trains as usual, turns its reply into one vector (:mod:`fedtune.privacy.sums`:
   n x update, n, n x loss), quantises it and uploads it masked: uniform in Z_2^32 to the server.
3. ``aggregate_train`` asks the survivors for the shares that unmask the sum (self-mask seeds of
   survivors, mask keys of nodes that dropped after the share stage), reconstructs the sum,
   and hands the wrapped strategy the single reply that FedAvg would have computed.

The server never holds one client's update, its example count or its loss. Bytes of the extra
exchanges are in ``extra_bytes_{down,up}_per_client`` and included in the bytes columns. The
round's neighbour graph comes from secret randomness
(:func:`~fedtune.privacy.randomness.privacy_rng`): clients that knew it in advance could collude
around one neighbourhood. Keys and shares are bound to the context ``fedtune-secagg|run=<Flower's
run id>|round=<r>``; a node refuses a context naming another run.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedtune.payloads import Payload, payload_of
from fedtune.privacy.randomness import privacy_rng
from fedtune.privacy.sums import dequantize_sum, from_sum, vector_length
from fedtune.secagg.context import context_for
from fedtune.secagg.crypto import SecAggError
from fedtune.secagg.masking import max_clients
from fedtune.secagg.protocol import SecAggServer, neighbours
from fedtune.strategies.hooks import hooks_of
from fedtune.strategies.wrapper import Wrapper
from fedtune.wire import Records
from fedtune.wire.flower import content_bytes, to_recorddict

log = logging.getLogger("fedtune")

STAGE = "query.secagg"  # message type of the protocol's own exchanges
RECORD = "secagg"


class SecureAggregation(Wrapper):
    """The protocol's server side; the wrapped strategy aggregates the unmasked sum."""

    masks_replies = True  # the round loop checks replies with check_reply only

    def __init__(self, inner: Strategy, payload: Payload, section: Any,
                 wire_dtype: type | None, timeout: float, pro: bool = False) -> None:
        super().__init__(inner, payload, wire_dtype)
        self.pro = pro  # FedKSeed-Pro: the clients' seed statistics are summed too
        self.section = section
        self.timeout = timeout
        self.clip_range = section.clip_range_for(payload)
        # per round, rebuilt by configure_train (transient: nothing to checkpoint)
        self.grid: Grid | None = None
        self.server: SecAggServer | None = None
        self.index: dict[int, int] = {}  # Flower node id -> protocol index 1..m
        self.logged: set[tuple[str, int]] = set()
        self.clipped = 0  # values beyond the clip range in the round's sum
        self.down = self.up = 0.0  # protocol bytes per client this round

    # ---- the protocol's exchanges ----------------------------------------------------------
    def _exchange(self, grid: Grid, contents: dict[int, RecordDict]) -> dict[int, Any]:
        """Send one stage's messages; {index: the reply's secagg record} of those that answered
        without error (the others drop out of the protocol)."""
        msgs = [Message(content, dst_node_id=node, message_type=STAGE)
                for node, content in contents.items()]
        self.down += sum(content_bytes(c) for c in contents.values()) / max(1, len(self.index))
        replies = list(grid.send_and_receive(msgs, timeout=self.timeout)) if msgs else []
        sent = {m.metadata.message_id: m.metadata.dst_node_id for m in msgs
                if m.metadata.message_id}  # (the SuperLink answers for a lost node itself)
        out = {}
        for reply in replies:
            node = sent.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)
            if reply.has_error() or RECORD not in reply.content.config_records:
                log.warning("secagg: node %d left the protocol (%s)", node,
                            reply.error.reason if reply.has_error() else "no secagg record")
                continue
            self.up += content_bytes(reply.content) / max(1, len(self.index))
            out[self.index[node]] = reply.content.config_records[RECORD]
        return out

    def _log_dropped(self, stage: str) -> None:
        """Name (once) every node the protocol dropped or whose shares it ignored, and why."""
        assert self.server is not None
        names = {i: node for node, i in self.index.items()}
        for what, found in (("dropped", self.server.dropped), ("ignored", self.server.ignored)):
            for i, reason in found.items():
                if (what, i) not in self.logged:
                    self.logged.add((what, i))
                    log.warning("secagg %s: node %d %s: %s", stage, names[i], what, reason)

    def _content(self, stage: str, **values: Any) -> RecordDict:
        return RecordDict({RECORD: ConfigRecord({"stage": stage, **values})})

    def configure_train(self, server_round: int, arrays: Any, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        messages = list(self.inner.configure_train(server_round, arrays, config, grid))
        self.grid, self.down, self.up, self.logged, self.clipped = grid, 0.0, 0.0, set(), 0
        self.set_reference(arrays)
        m = len(messages)
        if not 2 <= m <= max_clients(self.section.secagg_bits):
            log.warning("round %d skipped: secure aggregation needs 2 to %d clients per round "
                        "(secagg-bits=%d); %d were sampled", server_round,
                        max_clients(self.section.secagg_bits), self.section.secagg_bits, m)
            return []
        self.index = {msg.metadata.dst_node_id: i + 1 for i, msg in enumerate(messages)}
        nodes = {i: node for node, i in self.index.items()}
        k = self.section.neighbours_for(m)
        threshold = self.section.threshold_for(k)
        graph_seed = int(privacy_rng("secagg-graph", self.fingerprint, server_round)
                         .integers(2**63))
        graph = neighbours(m, k, graph_seed)
        context = context_for(self.run_id, server_round)
        self.server = SecAggServer(list(nodes), threshold, graph, context)

        keys = self._exchange(grid, {nodes[i]: self._content(
            "setup", index=i, threshold=threshold, neighbours=graph[i], context=context)
            for i in nodes})
        routed_keys = self.server.receive_keys({i: dict(r) for i, r in keys.items()})
        self._log_dropped("setup")
        shares = self._exchange(grid, {nodes[i]: self._content(
            "share", ids=list(peers), pk_c=[peers[j][0] for j in peers],
            pk_s=[peers[j][1] for j in peers]) for i, peers in routed_keys.items()})
        routed = self.server.route_shares(
            {i: dict(zip(r["ids"], r["ct"], strict=True)) for i, r in shares.items()
             if "ids" in r and "ct" in r})
        self._log_dropped("share")
        out = []
        for msg in messages:
            i = self.index[msg.metadata.dst_node_id]
            if i not in routed:
                continue  # left the protocol before it could mask: it is not trained
            content = RecordDict(dict(msg.content.items()))
            content[RECORD] = ConfigRecord({
                "ids": list(routed[i]), "ct": list(routed[i].values()),
                "clip-range": self.clip_range, "bits": self.section.secagg_bits})
            out.append(Message(content, dst_node_id=msg.metadata.dst_node_id,
                               message_type=msg.metadata.message_type))
        return out

    def check_reply(self, content: Records) -> str | None:
        """A masked reply: one ``masked`` byte string of the round's vector length (uint32)."""
        masked = content.configs.get(RECORD, {}).get("masked")
        if not isinstance(masked, bytes):
            return "no 'secagg' record with 'masked' bytes"
        if self.reference is None:
            return None
        expected = 4 * vector_length(self.payload, self.reference, self.pro)
        if len(masked) != expected:
            return f"masked vector of {len(masked)} bytes, expected {expected}"
        return None

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[Any, MetricRecord | None]:
        replies = list(replies)
        if not replies or self.server is None or self.grid is None or self.reference is None:
            return None, None
        length = vector_length(self.payload, self.reference, self.pro)
        self.server.receive_masked({self.index[r.metadata.src_node_id]: np.frombuffer(
            r.content.config_records[RECORD]["masked"], dtype="<u4") for r in replies},
            length)
        self._log_dropped("masked input")
        nodes = {i: node for node, i in self.index.items()}
        requests = self.server.unmask_requests()
        answers = self._exchange(self.grid, {nodes[i]: self._content(
            "unmask", survivors=survivors, dropped=dropped)
            for i, (survivors, dropped) in requests.items()})
        try:
            total = self.server.finish({i: _shares(r) for i, r in answers.items()})
        except SecAggError as err:
            self._log_dropped("unmask")
            log.warning("round %d skipped: secure aggregation could not unmask the sum: %s",
                        server_round, err)
            return None, None
        self._log_dropped("unmask")
        count = len(self.server.survivors)
        summed = dequantize_sum(total, count, self.clip_range, self.section.secagg_bits)
        self.clipped = int(round(summed[-1]))
        if self.clipped:
            log.warning("round %d: %d values of the clients' vectors exceeded secagg-clip-range="
                        "%g and were clipped; raise it", server_round, self.clipped,
                        self.clip_range)
        plain = from_sum(self.payload, self.reference, summed, self.pro)
        reply = replies[0]
        for name in list(reply.content.keys()):
            del reply.content[name]
        for name, record in to_recorddict(plain).items():
            reply.content[name] = record
        released = hooks_of(self.inner).release_sum(  # dp='client': noise on the sum
            server_round, reply, summed[:self.payload.size(self.reference)])
        if released is not None:
            return released
        return self.inner.aggregate_train(server_round, [reply])

    def round_report(self) -> dict[str, Any]:
        """The wrapped strategy's columns (DP's, if any) and the protocol's own."""
        return {**super().round_report(), "extra_bytes_down_per_client": self.down,
                "extra_bytes_up_per_client": self.up, "secagg_clipped_values": self.clipped}


def _shares(record: Any) -> dict[str, dict[int, bytes]]:
    """An unmask reply as {"b": {j: share}, "sk": {j: share}}."""
    return {kind: dict(zip(record.get(f"{kind}-ids", []), record.get(kind, []), strict=True))
            for kind in ("b", "sk")}


def wrap(strategy: Strategy, cfg: Any, server: Any) -> SecureAggregation:
    """``strategy`` under secure aggregation, on the payload ``server`` (the algorithm's server
    side) declares; FedKSeed-Pro's seed statistics are summed too (under DP they are not: the
    strategy derives them from the noisy release instead)."""
    return SecureAggregation(strategy, payload_of(server), cfg.secagg,
                             getattr(server, "wire_dtype", None), cfg.server.round_timeout,
                             pro=getattr(server, "pro", False) and not cfg.privacy.enabled)
