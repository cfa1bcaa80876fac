"""The one split: the server's held-out records and each client's training / held-out records.

:func:`split` decides it for instruction examples and preference pairs alike.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import astuple
from typing import Literal, TypeVar

from fedtune.data import synthetic
from fedtune.data.config import DataConfig
from fedtune.data.partition import PartitionError, iid_partition, partition
from fedtune.data.readers import DataFileError
from fedtune.data.records import EXAMPLES, PAIRS, RecordType
from fedtune.data.sources import (
    all_records,
    client_file,
    held_out_source,
    method,
    separate_held_out,
)

__all__ = ["EXAMPLES", "PAIRS", "ROLES", "Role", "check_split", "split"]

T = TypeVar("T")
Role = Literal["server", "train", "held-out"]
ROLES: tuple[Role, ...] = ("server", "train", "held-out")
BUILTIN = "builtin"

log = logging.getLogger("fedtune")


def split(cfg: DataConfig, records: RecordType[T], role: Role, seed: int, partition_id: int = 0,
          num_partitions: int = 1, own_file: str = "") -> list[T]:
    """The ``records`` (:data:`EXAMPLES` or :data:`PAIRS`) that ``role`` gets.

    ``server``: the centralized held-out set, never on any client: the built-in one
    (``data=builtin`` without ``eval-data``); the separate
    held-out source (Natural Instructions evaluation tasks, ``eval-data``, a FedIT folder's
    ``global_test.json``; :mod:`fedtune.data.sources`); else the first ``eval-examples`` of the
    seeded shuffle of ``data``.

    ``train`` / ``held-out``: client ``partition_id`` of ``num_partitions``. Its records are
    its own file when it has one (``own_file``, deployment), shuffled with the run seed; its
    FedIT client file (``partition=auto`` on a FedIT folder); or its part of the training pool
    (``data`` less the server's share) under ``partition`` and ``partition-by``. The first
    tenth of them (at least one) is its held-out side, the rest its training side. Built-in
    data generates each side per client instead (:func:`fedtune.data.synthetic.client_examples`).
    """
    if role not in ROLES:
        raise ValueError(f"role '{role}' is not one of {', '.join(ROLES)}")
    if role == "server":
        return _server(cfg, records, seed)
    held_out = role == "held-out"
    if own_file:
        return _side(_shuffled(records.read(own_file, cfg.data_fields), seed), held_out,
                     own_file, records)
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition id {partition_id} outside [0, {num_partitions})")
    if cfg.data == BUILTIN:
        n = cfg.client_eval_examples if held_out else cfg.examples_per_client
        return [records.from_builtin(e, seed) for e in synthetic.client_examples(
            partition_id, num_partitions, n, seed, held_out)]
    if method(cfg) == "files":
        mine = client_file(cfg, records, partition_id, num_partitions, seed)
    else:
        mine = _parts(records, astuple(cfg), num_partitions, seed)[partition_id]
    return _side(mine, held_out, f"{cfg.data}: client {partition_id}", records)


def _side(mine: list[T], held_out: bool, whose: str, records: RecordType) -> list[T]:
    """The one held-out rule: a client's first tenth (at least one) is its held-out side."""
    if len(mine) < 2:
        raise DataFileError(f"{whose} has {len(mine)} {records.name[:-1]}; its first tenth (at "
                            "least one) is held out, which leaves none to train on; give it more "
                            "data or use fewer clients.")
    cut = max(1, len(mine) // 10)
    return mine[:cut] if held_out else mine[cut:]


def check_split(cfg: DataConfig, records: RecordType, seed: int, num_partitions: int) -> None:
    """Raise the error (a :class:`~fedtune.errors.ConfigError`, one sentence) that the server
    or any of ``num_partitions`` simulated clients would raise on its share of the data, so a
    simulation can refuse before it starts an engine: a malformed file (file, line, field), too
    few records for the held-out set and the clients, an empty partition."""
    split(cfg, records, "server", seed)
    for partition_id in range(num_partitions):
        split(cfg, records, "train", seed, partition_id, num_partitions)


def _shuffled(items: Sequence[T], seed: int) -> list[T]:
    return iid_partition(items, 1, seed)[0]


def _server(cfg: DataConfig, records: RecordType[T], seed: int) -> list[T]:
    if cfg.data == BUILTIN and not cfg.eval_data:  # deployment: nodes bring data, eval-data set
        return [records.from_builtin(e, seed)
                for e in synthetic.eval_examples(cfg.eval_examples, seed)]
    if separate_held_out(cfg):
        return held_out_source(cfg, records, seed)
    return _server_share(cfg, records, seed)[0]


def _server_share(cfg: DataConfig, records: RecordType[T], seed: int) -> tuple[list[T], list[T]]:
    """(the first ``eval-examples`` of the seeded shuffle of ``data``, the rest)."""
    shuffled = _shuffled(all_records(cfg, records, seed), seed)
    return shuffled[: cfg.eval_examples], shuffled[cfg.eval_examples:]


def _pool(cfg: DataConfig, records: RecordType[T], seed: int, num_partitions: int) -> list[T]:
    """Every training record: ``data`` less the server's held-out share."""
    if separate_held_out(cfg):
        pool = all_records(cfg, records, seed)
        return _shuffled(pool, seed) if records.shuffle_separate_pool else pool
    held, pool = _server_share(cfg, records, seed)
    if not pool:
        e, need = cfg.eval_examples, 2 * num_partitions  # each client: one held out, one to train
        lower = (f", lower eval-examples to at most {len(held) - need}" if len(held) > need
                 else "")
        raise DataFileError(f"{cfg.data}: all of its {records.name} went to the server's "
                            f"held-out set (it has {len(held)}, eval-examples={e}), none to the "
                            f"{num_partitions} clients; give at least {e + need} {records.name} "
                            f"({e} held out + 2 per client){lower} or give eval-data.")
    return pool


@functools.lru_cache(maxsize=8)
def _parts(records: RecordType[T], key: tuple, num_partitions: int, seed: int) -> list[list[T]]:
    cfg = DataConfig(*key)
    how, by = method(cfg), cfg.partition_by
    pool = _pool(cfg, records, seed, num_partitions)
    if len(pool) < num_partitions:
        raise DataFileError(f"{cfg.data}: {len(pool)} training {records.name} (after the "
                            f"server's held-out set) cannot cover {num_partitions} clients; "
                            "use fewer clients, more data or a lower eval-examples.")
    labels = None
    if how != "iid":
        labels = records.labels(pool, by)
        if not any(labels):
            raise PartitionError(f"partition={how} groups {records.name} by '{by}', but no "
                                 f"{records.name[:-1]} has one; "
                                 + records.fields_hint.format(by=by))
    parts = partition(pool, num_partitions, seed, how, by, cfg.dirichlet_alpha,
                      cfg.shards_per_client, labels=labels)
    sizes = sorted(map(len, parts))
    log.info(f"Partitioned {len(pool)} {records.name} of {cfg.data} into {num_partitions} "
             f"clients ({how} by {by}): sizes {sizes[0]} to {sizes[-1]}, median "
             f"{sizes[len(sizes) // 2]}.")
    return parts
