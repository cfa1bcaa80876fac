"""Partitioners: split a pool of records among clients, deterministically from the run seed.

- ``iid``: a seeded shuffle dealt round-robin.
- ``dirichlet``: per label value, client shares drawn from Dirichlet(alpha); small alpha gives
  strong label skew (Hsu et al., 2019; FedIT and OpenFedLLM use alpha=0.5 on Dolly).
- ``natural``: one client per distinct label value (task, category, user), clients numbered by
  the sorted values.
- ``shards``: pathological split (McMahan et al., 2017; FedIT): sort by label, cut into
  ``num_partitions * shards_per_client`` shards, deal ``shards_per_client`` shards to each client.

Flower's own ``flwr-datasets`` partitioners work on a ``datasets.Dataset``, and flwr-datasets
0.6.1 pins ``datasets<5`` (installing it would downgrade datasets 5.2 and huggingface_hub, which
trl and transformers here use), so these are implemented with numpy over plain lists instead;
they follow the same definitions. A partition that would be empty is an error that says how to
fix it, never a silent empty client.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np

from fedtune.errors import ConfigError
from fedtune.seeding import rng

T = TypeVar("T")

PARTITIONERS = ("iid", "dirichlet", "natural", "shards")
DIRICHLET_ATTEMPTS = 10


class PartitionError(ConfigError):
    """A partitioning that cannot give every client data; the message says how to fix it (a
    :class:`ConfigError`: one sentence from the CLI)."""


def _check_parts(n: int) -> None:
    if n < 1:
        raise PartitionError(f"num_partitions={n} must be at least 1.")


def iid_partition(items: Sequence[T], num_partitions: int, seed: int) -> list[list[T]]:
    """Shuffle with the run seed, then deal items round-robin into ``num_partitions`` parts."""
    _check_parts(num_partitions)
    if len(items) < num_partitions:
        raise PartitionError(f"IID partitioning of {len(items)} examples into {num_partitions} "
                             f"clients leaves client {len(items)} empty; use at most "
                             f"{len(items)} clients or more data.")
    order = rng(seed, "iid").permutation(len(items)).tolist()
    return [[items[i] for i in order[p::num_partitions]] for p in range(num_partitions)]


def dirichlet_partition(labels: Sequence[str], num_partitions: int, alpha: float,
                        seed: int) -> list[list[int]]:
    """Indices per client: each label's items split by shares drawn from Dirichlet(alpha).

    Redraws (up to 10 times, from the same seeded generator) while a client is empty, as
    Flower's DirichletPartitioner does for its minimum partition size.
    """
    _check_parts(num_partitions)
    if alpha <= 0:
        raise PartitionError(f"dirichlet-alpha={alpha} must be positive.")
    gen = rng(seed, "dirichlet")
    by_label = _groups(labels)
    for _ in range(DIRICHLET_ATTEMPTS):
        parts: list[list[int]] = [[] for _ in range(num_partitions)]
        for idx in by_label.values():
            idx = gen.permutation(idx)
            shares = gen.dirichlet([alpha] * num_partitions)
            cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(int)
            for p, chunk in enumerate(np.split(idx, cuts)):
                parts[p] += chunk.tolist()
        if min(map(len, parts)) > 0:
            return [sorted(p) for p in parts]
    empty = sum(1 for p in parts if not p)
    raise PartitionError(
        f"Dirichlet partitioning (alpha={alpha}) of {len(labels)} examples over "
        f"{len(by_label)} labels left {empty} of {num_partitions} clients empty in "
        f"{DIRICHLET_ATTEMPTS} draws; use fewer clients or a larger dirichlet-alpha."
    )


def natural_partition(labels: Sequence[str], num_partitions: int) -> list[list[int]]:
    """Indices per client: client p holds every item whose label is the p-th sorted value."""
    _check_parts(num_partitions)
    by_label = _groups(labels)
    if len(by_label) != num_partitions:
        shown = ", ".join(sorted(by_label)[:5]) + (", ..." if len(by_label) > 5 else "")
        raise PartitionError(
            f"Natural partitioning gives one client per distinct label and the data has "
            f"{len(by_label)} ({shown}), but there are {num_partitions} clients; run with "
            f"{len(by_label)} clients, or use partition=dirichlet or shards."
        )
    return [by_label[label] for label in sorted(by_label)]


def shard_partition(labels: Sequence[str], num_partitions: int, shards_per_client: int,
                    seed: int) -> list[list[int]]:
    """Indices per client: label-sorted shards, ``shards_per_client`` each, seeded."""
    _check_parts(num_partitions)
    if shards_per_client < 1:
        raise PartitionError(f"shards-per-client={shards_per_client} must be at least 1.")
    gen = rng(seed, "shards")
    num_shards = num_partitions * shards_per_client
    if len(labels) < num_shards:
        raise PartitionError(
            f"Shard partitioning needs at least {num_shards} examples ({num_partitions} "
            f"clients x {shards_per_client} shards) but has {len(labels)}; use fewer clients "
            f"or a smaller shards-per-client."
        )
    shuffled = gen.permutation(len(labels))
    order = sorted(shuffled.tolist(), key=lambda i: labels[i])  # stable: shuffled within label
    shards = np.array_split(np.asarray(order), num_shards)
    deal = gen.permutation(num_shards)
    return [sorted(i for s in deal[p * shards_per_client:(p + 1) * shards_per_client]
                   for i in shards[s].tolist()) for p in range(num_partitions)]


def _groups(labels: Sequence[str]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        out.setdefault(label, []).append(i)
    return {k: out[k] for k in sorted(out)}


def partition(items: Sequence[T], num_partitions: int, seed: int, method: str = "iid",
              by: str = "category", alpha: float = 0.5, shards_per_client: int = 2,
              labels: Sequence[str] | None = None) -> list[list[T]]:
    """Split ``items`` into ``num_partitions`` non-empty parts, each in a seeded random order.

    ``by`` names the attribute holding the label (``dirichlet``, ``natural``, ``shards``);
    ``labels`` gives each item's label instead, for records without such an attribute.
    """
    if method == "iid":
        return iid_partition(items, num_partitions, seed)
    if method not in PARTITIONERS:
        raise PartitionError(f"partition='{method}' is unknown; use one of "
                             f"{', '.join(PARTITIONERS)}.")
    if labels is None:
        labels = [str(getattr(item, by)) for item in items]
    if items and not any(labels):
        raise PartitionError(f"partition={method} groups examples by '{by}', but no example "
                             f"has one; map a field to it with data-fields (e.g. "
                             f"'{by}=topic') or use partition=iid.")
    if method == "dirichlet":
        parts = dirichlet_partition(labels, num_partitions, alpha, seed)
    elif method == "natural":
        parts = natural_partition(labels, num_partitions)
    else:
        parts = shard_partition(labels, num_partitions, shards_per_client, seed)
    gen = rng(seed, method, "order")
    return [[items[i] for i in gen.permutation(part).tolist()] for part in parts]
