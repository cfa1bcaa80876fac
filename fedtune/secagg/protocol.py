"""SecAgg+ (Bell et al., CCS 2020) as pure functions of (state, message) -> (state, reply).

Rounds: setup (each client publishes two X25519 keys), share (each client Shamir-shares its
self-mask seed b and its mask key sk_s among its neighbours, encrypted to each), mask (each
client uploads x + PRG(b) + signed pairwise masks), unmask (survivors reveal b-shares of
survivors and sk-shares of nodes that dropped after the share stage; never both for one node).

As in Bonawitz et al. and Flower, a node also keeps one share of its own b (one more dropout
tolerated) when that is safe: with d neighbours, b then has d + 1 holders and sk_s d, and no
t holders of each may be disjoint, so it keeps one only if 2t > d + 1; the server requires
2t > d (the same for even d; for odd d, e.g. full SecAgg over an even m, t = (d+1)/2 is allowed).

Client state is a flat dict of bytes, int, str and lists of those, so it survives a Flower
ConfigRecord between messages. The server is honest-but-curious: there is no consistency
round (signatures), so a server lying about who dropped is out of scope.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np

from fedtune.secagg import crypto
from fedtune.secagg.crypto import MAX_POINT, SecAggError
from fedtune.secagg.masking import add, prg, sub

_ENC_LABEL = b"fedtune-secagg/share-encryption\x00"
_MASK_LABEL = b"fedtune-secagg/pairwise-mask\x00"


def neighbours(m: int, k: int, seed: int) -> dict[int, list[int]]:
    """A symmetric k-regular graph over 1..m: a Harary ring over the nodes sorted by
    SHA-256(seed, node), the same in every process. k >= m - 1: everyone (plain SecAgg)."""
    if not 1 <= m <= MAX_POINT or k < 0:
        raise SecAggError(f"a graph needs 1 <= m <= {MAX_POINT} and k >= 0 (got m={m}, k={k}).")
    if k >= m - 1:
        return {i: [j for j in range(1, m + 1) if j != i] for i in range(1, m + 1)}
    if k < 2 or k % 2:
        raise SecAggError(f"the number of neighbours k={k} must be even and at least 2.")
    ring = sorted(range(1, m + 1), key=lambda i: hashlib.sha256(f"{seed}|{i}".encode()).digest())
    graph: dict[int, set[int]] = {i: set() for i in ring}
    for pos, node in enumerate(ring):
        for off in range(1, k // 2 + 1):
            other = ring[(pos + off) % m]
            graph[node].add(other)
            graph[other].add(node)
    return {i: sorted(graph[i]) for i in range(1, m + 1)}


def _aad(context: bytes, sender: int, recipient: int) -> bytes:
    return context + struct.pack(">II", sender, recipient)


def _key_pair(pair: Any) -> tuple[bytes, bytes] | None:
    """(pk_c, pk_s) if ``pair`` holds two distinct 32-byte keys, else None."""
    ok = isinstance(pair, tuple | list) and len(pair) == 2 and all(map(crypto.is_key, pair))
    return (pair[0], pair[1]) if ok and pair[0] != pair[1] else None


def keeps_own_share(threshold: int, degree: int) -> bool:
    """Whether a node with ``degree`` neighbours holds a share of its own b (see above)."""
    return 2 * threshold > degree + 1


def _check_stage(state: Mapping[str, Any], stage: str) -> None:
    if (got := state.get("stage") if isinstance(state, Mapping) else state) != stage:
        raise SecAggError(f"this call needs client state at stage '{stage}', not {got!r}.")


def client_setup(
    index: int, threshold: int, neighbour_ids: list[int], context: bytes
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Fresh keys (c: share encryption, s: pairwise masks) and self-mask seed b for one round."""
    if not crypto.is_point(index) or not isinstance(threshold, int) or threshold < 1:
        raise SecAggError(f"bad node index {index!r} or threshold {threshold!r}.")
    if not isinstance(context, bytes):
        raise SecAggError("the round context must be bytes.")
    ids = list(neighbour_ids)
    if not all(crypto.is_point(j) and j != index for j in ids) or len(set(ids)) != len(ids):
        raise SecAggError(f"node {index}'s neighbours must be distinct other node indices.")
    sk_c, pk_c = crypto.keypair()
    sk_s, pk_s = crypto.keypair()
    b = os.urandom(32)
    state = {
        "stage": "setup", "index": index, "threshold": threshold, "neighbours": sorted(ids),
        "context": context, "sk_c": sk_c, "pk_c": pk_c, "sk_s": sk_s, "pk_s": pk_s, "b": b,
    }  # fmt: skip
    return state, {"pk_c": pk_c, "pk_s": pk_s}


def client_share(
    state: dict[str, Any], public_keys: Mapping[int, tuple[bytes, bytes]]
) -> tuple[dict[str, Any], dict[int, bytes]]:
    """Shamir-share b (and keep my own b-share) and sk_s among the neighbours that sent keys."""
    _check_stage(state, "setup")
    me, t, ctx = state["index"], state["threshold"], state["context"]
    allowed = set(state["neighbours"])
    keys: dict[int, tuple[bytes, bytes]] = {}
    for j, pair in public_keys.items():
        if j not in allowed:
            raise SecAggError(f"node {me} got keys from node {j!r}, which is not its neighbour.")
        if (checked := _key_pair(pair)) is None:
            raise SecAggError(f"node {me} got malformed public keys for node {j}.")
        keys[j] = checked
    own = keeps_own_share(t, len(state["neighbours"]))
    if len(keys) + own < t:
        raise SecAggError(f"node {me} has {len(keys)} neighbours with keys, too few for t={t}.")
    every_key = [k for pair in keys.values() for k in pair] + [state["pk_c"], state["pk_s"]]
    if len(set(every_key)) != len(every_key):
        raise SecAggError(f"node {me} got a repeated public key (a replayed or reflected key).")
    ids = sorted(keys)
    points = ids + [me] if own else ids  # my own sk_s share is never revealed: dropped here
    b_shares = crypto.share_secret(state["b"], t, points) if points else {}
    sk_shares = crypto.share_secret(state["sk_s"], t, points) if points else {}
    enc_ctx = _ENC_LABEL + ctx
    out = {}
    for j in ids:
        key = crypto.agree(state["sk_c"], keys[j][0], enc_ctx)
        packed = crypto.pack_shares(me, j, b_shares[j], sk_shares[j])
        out[j] = crypto.encrypt(key, packed, _aad(ctx, me, j))
    new = dict(state, stage="share", own_b_share=b_shares.get(me, b""), peer_ids=ids)
    new["peer_pk_c"] = [keys[j][0] for j in ids]
    new["peer_pk_s"] = [keys[j][1] for j in ids]
    return new, out


def _peer_keys(state: Mapping[str, Any]) -> dict[int, tuple[bytes, bytes]]:
    pairs = zip(state["peer_pk_c"], state["peer_pk_s"], strict=True)
    return dict(zip(state["peer_ids"], pairs, strict=True))


def _open(state: Mapping[str, Any], sender: int, ciphertext: bytes) -> tuple[bytes, bytes]:
    me, ctx = state["index"], state["context"]
    key = crypto.agree(state["sk_c"], _peer_keys(state)[sender][0], _ENC_LABEL + ctx)
    plain = crypto.decrypt(key, ciphertext, _aad(ctx, sender, me))
    return crypto.unpack_shares(plain, sender, me)


def client_mask(
    state: dict[str, Any], ciphertexts: Mapping[int, bytes], vector: np.ndarray
) -> tuple[dict[str, Any], np.ndarray]:
    """y = x + PRG(b) + sum_j (+PRG(s_ij) if i < j else -PRG(s_ij)) over senders j, mod 2^32.

    The ciphertexts are opened here too, so a tampered share aborts before anything is masked.
    """
    _check_stage(state, "share")
    me, t, ctx = state["index"], state["threshold"], state["context"]
    peers = _peer_keys(state)
    for j, ct in ciphertexts.items():
        if j not in peers or not isinstance(ct, bytes):
            raise SecAggError(f"node {me} got a share from node {j!r}, which sent it no keys.")
        _open(state, j, ct)
    if len(ciphertexts) + keeps_own_share(t, len(state["neighbours"])) < t:
        raise SecAggError(f"node {me} got {len(ciphertexts)} shares, too few for t={t}.")
    if not isinstance(vector, np.ndarray) or vector.dtype != np.uint32 or vector.ndim != 1:
        raise SecAggError("the vector to mask must be a 1-D uint32 numpy array (quantised).")
    n = vector.shape[0]
    y = add(vector, prg(state["b"], n))
    mask_ctx = _MASK_LABEL + ctx
    for j in sorted(ciphertexts):
        pairwise = prg(crypto.agree(state["sk_s"], peers[j][1], mask_ctx), n)
        y = add(y, pairwise) if me < j else sub(y, pairwise)
    ids = sorted(ciphertexts)
    new = {k: v for k, v in state.items() if k not in ("b", "sk_s")}  # no longer needed
    new.update(stage="mask", cipher_ids=ids, ciphers=[ciphertexts[j] for j in ids])
    return new, y


def client_unmask(
    state: dict[str, Any], survivors: list[int], dropped: list[int]
) -> dict[str, dict[int, bytes]]:
    """b-shares of ``survivors`` (plus my own b-share, if I keep one) and sk-shares of ``dropped``.

    Refuses to reveal both shares of one node, and marks ``state`` (in place) as spent so a
    second request with other lists is refused too: persist it if the state outlives the call.
    """
    _check_stage(state, "mask")
    me, t = state["index"], state["threshold"]
    alive, gone = list(survivors), list(dropped)
    held = dict(zip(state["cipher_ids"], state["ciphers"], strict=True))
    if me in gone:
        raise SecAggError(f"node {me} is asked to reveal its own mask key (listed as dropped).")
    if set(alive) & set(gone):
        raise SecAggError(f"node {me} is asked for both shares of nodes {set(alive) & set(gone)}.")
    unknown = [j for j in alive + gone if j not in held and j != me]
    if unknown:
        raise SecAggError(f"node {me} holds no shares from nodes {unknown}.")
    own = keeps_own_share(t, len(state["neighbours"]))
    if len(set(alive) - {me}) + own < t:
        raise SecAggError(f"node {me} sees too few surviving neighbours for t={t}; round aborted.")
    state["stage"] = "done"
    opened = {j: _open(state, j, held[j]) for j in set(alive + gone) - {me}}
    reply_b = {j: opened[j][0] for j in alive if j != me}
    if own:
        reply_b[me] = state["own_b_share"]
    return {"b": reply_b, "sk": {j: opened[j][1] for j in gone}}


class SecAggServer:
    """The server's side of one round; each step drops bad nodes (reason in ``dropped``)."""

    def __init__(
        self, indices: list[int], threshold: int, graph: Mapping[int, list[int]], context: bytes
    ) -> None:
        ids = set(indices)
        if not ids or len(ids) != len(indices) or not all(map(crypto.is_point, ids)):
            raise SecAggError(f"node indices must be distinct integers in 1..{MAX_POINT}.")
        if not isinstance(context, bytes):
            raise SecAggError("the round context must be bytes.")
        if set(graph) != ids:
            raise SecAggError("the neighbourhood graph must have exactly the round's nodes.")
        self.graph = {i: sorted(set(graph[i])) for i in ids}
        self.indices, self.threshold, self.context = sorted(ids), threshold, context
        for i, near in self.graph.items():
            if i in near or not set(near) <= ids or any(i not in self.graph[j] for j in near):
                raise SecAggError(f"the neighbourhood graph is not symmetric at node {i}.")
        degree = max(len(near) for near in self.graph.values())
        if not isinstance(threshold, int) or 2 * threshold <= degree:
            raise SecAggError(f"threshold {threshold} must exceed half of k={degree} neighbours.")
        if any(threshold > self._holders(i, len(near)) for i, near in self.graph.items()):
            raise SecAggError(f"threshold {threshold} exceeds a neighbourhood's share holders.")
        self.dropped: dict[int, str] = {}
        self.ignored: dict[int, str] = {}  # survivors whose unmask reply was unusable
        self._stage = "keys"
        self._keys: dict[int, tuple[bytes, bytes]] = {}
        self._shared: set[int] = set()
        self._sum = np.zeros(0, dtype=np.uint32)
        self._alive: set[int] = set()

    def _holders(self, node: int, neighbours: int) -> int:
        """Holders of ``node``'s b-shares among ``neighbours`` of them plus, maybe, itself."""
        return neighbours + keeps_own_share(self.threshold, len(self.graph[node]))

    @property
    def survivors(self) -> list[int]:
        """Nodes whose masked vector is in the sum."""
        return sorted(self._alive)

    @property
    def _gone(self) -> set[int]:
        """Nodes that completed the share stage but whose masked vector is not in the sum."""
        return self._shared - self._alive

    def _advance(self, expected: str, nxt: str) -> None:
        if self._stage != expected:
            raise SecAggError(f"the server is at stage '{self._stage}', not '{expected}'.")
        self._stage = nxt

    def _drop(self, node: int, reason: str) -> None:
        self.dropped.setdefault(node, reason)

    def _prune(self, members: set[int], stage: str) -> set[int]:
        """Drop members whose b would have fewer than t holders, until none is left."""
        while True:
            weak = {
                i for i in members
                if self._holders(i, len(members & set(self.graph[i]))) < self.threshold
            }  # fmt: skip
            if not weak:
                return members
            for i in weak:
                self._drop(i, f"too few neighbours completed the {stage} stage to hold t shares")
            members -= weak

    def _missing(self, expected: set[int], replies: Mapping[int, Any], stage: str) -> None:
        for i in sorted(expected ^ set(replies)):  # silent, or not (any longer) in the round
            self._drop(i, f"{'no reply' if i in expected else 'not expected'} at the {stage} stage")

    def receive_keys(
        self, replies: Mapping[int, Mapping[str, Any]]
    ) -> dict[int, dict[int, tuple[bytes, bytes]]]:
        """Per valid node, the public keys of its neighbours that also sent valid keys."""
        self._advance("keys", "shares")
        self._missing(set(self.indices), replies, "setup")
        owners: dict[bytes, set[int]] = {}
        for i in sorted(set(replies) & set(self.indices)):
            reply = replies[i] if isinstance(replies[i], Mapping) else {}
            if (pair := _key_pair([reply.get("pk_c"), reply.get("pk_s")])) is None:
                self._drop(i, "malformed public keys at the setup stage")
                continue
            self._keys[i] = pair
            for key in pair:
                owners.setdefault(key, set()).add(i)
        for i in set().union(*(nodes for nodes in owners.values() if len(nodes) > 1)):
            self._drop(i, "a public key another node also sent (a replay) at the setup stage")
            del self._keys[i]
        valid = self._prune(set(self._keys), "setup")
        self._keys = {i: self._keys[i] for i in valid}
        return {i: {j: self._keys[j] for j in self.graph[i] if j in valid} for i in sorted(valid)}

    def route_shares(
        self, replies: Mapping[int, Mapping[int, bytes]]
    ) -> dict[int, dict[int, bytes]]:
        """Per recipient, {sender: ciphertext} among the nodes that completed the share stage."""
        self._advance("shares", "masked")
        self._missing(set(self._keys), replies, "share")
        done: dict[int, Mapping[int, bytes]] = {}
        for i in sorted(set(replies) & set(self._keys)):
            reply, expected = replies[i], {j for j in self.graph[i] if j in self._keys}
            if not isinstance(reply, Mapping) or set(reply) != expected:
                self._drop(i, "shares addressed to other nodes than its keyed neighbours")
            elif not all(isinstance(ct, bytes) and len(ct) >= 28 for ct in reply.values()):
                self._drop(i, "malformed ciphertexts at the share stage")
            else:
                done[i] = reply
        self._shared = self._prune(set(done), "share")
        return {j: {i: done[i][j] for i in self.graph[j] if i in self._shared}
                for j in sorted(self._shared)}  # fmt: skip

    def receive_masked(self, replies: Mapping[int, np.ndarray], length: int) -> None:
        """Add the valid masked vectors (uint32, ``length`` long) into the running sum."""
        self._advance("masked", "unmask")
        self._missing(self._shared, replies, "mask")
        total = np.zeros(length, dtype=np.uint32)
        for i in sorted(set(replies) & self._shared):
            y = replies[i]
            if not isinstance(y, np.ndarray) or y.dtype != np.uint32 or y.shape != (length,):
                got = f"{getattr(y, 'dtype', type(y).__name__)} {getattr(y, 'shape', '')}"
                self._drop(i, f"masked vector is not uint32 of length {length} (got {got})")
                continue
            total = add(total, y)
            self._alive.add(i)
        self._sum = total

    def _request(self, i: int) -> tuple[list[int], list[int]]:
        near = self.graph[i]
        return [j for j in near if j in self._alive], [j for j in near if j in self._gone]

    def unmask_requests(self) -> dict[int, tuple[list[int], list[int]]]:
        """Per survivor: (its surviving neighbours, its neighbours that dropped after sharing)."""
        if self._stage != "unmask":
            raise SecAggError(f"the server is at stage '{self._stage}', not 'unmask'.")
        return {i: self._request(i) for i in self.survivors}

    def _collect(self, replies: Mapping[int, Mapping[str, Any]]) -> tuple[dict, dict]:
        """Valid shares per secret owner: ({owner: {holder: b-share}}, same for sk-shares)."""
        b_shares: dict[int, dict[int, bytes]] = {}
        sk_shares: dict[int, dict[int, bytes]] = {}
        for r in sorted(set(replies) & self._alive):
            reply, (alive, gone) = replies[r], self._request(r)
            try:
                b, sk = reply["b"], reply["sk"]
                own = {r} if keeps_own_share(self.threshold, len(self.graph[r])) else set()
                if not set(b) <= set(alive) | own or not set(sk) <= set(gone):
                    raise SecAggError("it revealed shares that were not requested")
                for share in [*b.values(), *sk.values()]:
                    crypto.decode_share(r, share)
            except (SecAggError, KeyError, TypeError, AttributeError) as exc:
                self.ignored[r] = f"malformed unmask reply: {exc}"
                continue
            for j, share in b.items():
                b_shares.setdefault(j, {})[r] = share
            for j, share in sk.items():
                sk_shares.setdefault(j, {})[r] = share
        return b_shares, sk_shares

    def _reconstruct(self, node: int, shares: dict[int, bytes], what: str) -> bytes:
        """A secret from t shares; with more, each cyclic window of t is tried so that one
        corrupt share is skipped (its result fails the shares' check, or sk_s its public key)."""
        held, t = sorted(shares), self.threshold
        for start in range(len(held) if len(held) >= t else 0):
            window = [held[(start + n) % len(held)] for n in range(t)]
            try:
                secret = crypto.combine_secret({h: shares[h] for h in window}, t)
                if what == "b" or crypto.public_from_private(secret) == self._keys[node][1]:
                    return secret
            except SecAggError:
                continue
        name = "self-mask seed" if what == "b" else "mask key"
        raise SecAggError(f"node {node}'s {name} cannot be rebuilt from {len(shares)} shares.")

    def finish(self, replies: Mapping[int, Mapping[str, Any]]) -> np.ndarray:
        """The uint32 sum of the survivors' vectors, with every mask removed."""
        self._advance("unmask", "done")
        if len(self._alive) < self.threshold:
            raise SecAggError(
                f"only {len(self._alive)} clients survived, fewer than threshold {self.threshold}."
            )
        total, n = self._sum, self._sum.shape[0]
        b_shares, sk_shares = self._collect(replies)
        for i in sorted(self._alive):
            total = sub(total, prg(self._reconstruct(i, b_shares.get(i, {}), "b"), n))
        mask_ctx = _MASK_LABEL + self.context
        for j in sorted(self._gone):
            sk = self._reconstruct(j, sk_shares.get(j, {}), "sk")
            for r in self.graph[j]:
                if r in self._alive:  # r added +PRG(s_rj) if r < j, else -PRG(s_rj)
                    pairwise = prg(crypto.agree(sk, self._keys[r][1], mask_ctx), n)
                    total = sub(total, pairwise) if r < j else add(total, pairwise)
        return total
