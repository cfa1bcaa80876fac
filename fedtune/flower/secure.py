"""A node's side of secure aggregation (:mod:`fedtune.strategies.secagg`): the protocol's
stages, its state kept in the node's ``Context.state`` between messages (a deployed ClientApp
is a new process per message, so the stages import no torch), and the masked reply that
replaces the plain one."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flwr.app import ConfigRecord, RecordDict

from fedtune.privacy.randomness import privacy_rng
from fedtune.secagg.context import check_context
from fedtune.secagg.protocol import client_mask, client_setup, client_share, client_unmask

if TYPE_CHECKING:
    from fedtune.config import Config
    from fedtune.node import Node
    from fedtune.payloads import Arrays, Payload
    from fedtune.wire import Records

SECAGG = "secagg"  # the record (messages) and the node-state entry (the protocol's state)


def _saved(state: RecordDict) -> dict[str, Any]:
    return dict(state.config_records[SECAGG]) if SECAGG in state.config_records else {}


def stage(content: RecordDict, state: RecordDict, run_id: int | None = None) -> RecordDict:
    """Answer one stage: ``setup`` (public keys), ``share`` (encrypted shares for each
    neighbour) or ``unmask`` (the shares that remove the masks of the round's sum). With
    ``run_id`` (the node's own Flower run id), a setup whose context names another run is
    refused."""
    conf = content.config_records[SECAGG]
    kind = conf["stage"]
    if kind == "setup" and run_id is not None:
        check_context(bytes(conf["context"]), run_id)
    if kind == "setup":
        saved, reply = client_setup(int(conf["index"]), int(conf["threshold"]),
                                    [int(j) for j in conf["neighbours"]], bytes(conf["context"]))
    elif kind == "share":
        keys = {int(j): (c, s) for j, c, s in zip(conf["ids"], conf["pk_c"], conf["pk_s"],
                                                  strict=True)}
        saved, cts = client_share(_saved(state), keys)
        reply = {"ids": list(cts), "ct": list(cts.values())}
    elif kind == "unmask":
        saved = _saved(state)
        shares = client_unmask(saved, [int(j) for j in conf.get("survivors", [])],
                               [int(j) for j in conf.get("dropped", [])])
        reply = {}
        for name in ("b", "sk"):
            reply[f"{name}-ids"], reply[name] = list(shares[name]), list(shares[name].values())
    else:
        raise ValueError(f"unknown secure aggregation stage '{kind}'")
    state[SECAGG] = ConfigRecord(saved)
    return RecordDict({SECAGG: ConfigRecord({k: v for k, v in reply.items() if v != []})})


def clip_bound(cfg: Config, payload: Payload, reference: Arrays, received: Records) -> float:
    """``dp='client'``: the norm a node clips its contribution to, C, less the rounding margin
    (:func:`~fedtune.privacy.sums.rounding_margin`) when it goes through the secure sum;
    ``reference``: the global arrays the node received."""
    from fedtune.privacy.sums import rounding_margin

    bound = cfg.privacy.clip_norm_for(payload)
    if SECAGG not in received.configs:
        return bound
    conf = received.configs[SECAGG]
    margin = rounding_margin(payload, reference, float(conf["clip-range"]), int(conf["bits"]))
    if margin >= bound:
        raise ValueError(f"secagg-bits={conf['bits']} rounds this update by up to {margin:.3g}, "
                         f"not below dp-clip-norm={bound:g}; raise secagg-bits or lower "
                         "secagg-clip-range.")
    return bound - margin


def masked_reply(cfg: Config, payload: Payload, reference: Arrays, reply: Records,
                 received: Records, node: Node, state: RecordDict) -> RecordDict:
    """The reply as one quantised vector, masked: uniform in Z_2^32 to anyone but the sum.
    Under DP it holds the clipped contribution only (no loss, no FedKSeed-Pro statistics), and
    its stochastic rounding is secret randomness (the server must not know it)."""
    from fedtune.privacy.sums import quantize_vector, to_vector  # torch: not for the stages

    conf = received.configs[SECAGG]
    rnd = int(received.configs["config"]["server-round"])
    private = cfg.privacy.enabled
    # FedKSeed-Pro: its statistics too (not under DP: they would leave without noise)
    pro = "importance" in received.configs["config"] and not private
    vector = to_vector(payload, reply, reference, pro, private=private)
    quantised = quantize_vector(vector, float(conf["clip-range"]), int(conf["bits"]),
                                privacy_rng("secagg-rounding", cfg.server.seed, rnd, node.name))
    ciphertexts = dict(zip((int(j) for j in conf.get("ids", [])), conf.get("ct", []),
                           strict=True))
    saved, masked = client_mask(_saved(state), ciphertexts, quantised)
    state[SECAGG] = ConfigRecord(saved)
    return RecordDict({SECAGG: ConfigRecord({"masked": masked.astype("<u4").tobytes()})})
