"""The context every key and share of a SecAgg round is bound to (HKDF info, AEAD associated
data): Flower's run id and the round. A node checks that it names the node's own run, so keys
and shares of one run are never taken for another's (the run seed alone, which every run of
one config shares, did not separate them)."""

from __future__ import annotations

from fedtune.secagg.crypto import SecAggError

CONTEXT = "fedtune-secagg|run={run}|"


def context_for(run_id: int, server_round: int) -> bytes:
    """The round's key-derivation context: Flower's run id and the round."""
    return (CONTEXT.format(run=int(run_id)) + f"round={int(server_round)}").encode()


def check_context(context: bytes, run_id: int) -> None:
    """A node's own check that the server's context names the node's run (not another's)."""
    if not isinstance(context, bytes) or not context.startswith(
            CONTEXT.format(run=int(run_id)).encode()):
        raise SecAggError(f"the secure aggregation context {context!r} does not name this "
                          f"node's run {run_id}; refusing to take part.")
