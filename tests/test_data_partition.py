"""Partitioners: sizes, determinism, label skew, natural ids, shards, empty-partition errors."""

from collections import Counter

import numpy as np
import pytest

from fedtune.data.example import Example
from fedtune.data.partition import (
    PartitionError,
    dirichlet_partition,
    iid_partition,
    natural_partition,
    partition,
    shard_partition,
)

LABELS = [f"c{i % 8}" for i in range(2000)]


def _max_share(parts: list[list[int]]) -> float:
    """Mean over clients of the largest single-label share of the client's examples."""
    return float(np.mean([Counter(LABELS[i] for i in p).most_common(1)[0][1] / len(p)
                          for p in parts]))


@pytest.mark.parametrize("alpha", [0.1, 1.0, 10.0])
def test_dirichlet_covers_every_index_once_and_is_deterministic(alpha):
    parts = dirichlet_partition(LABELS, 10, alpha, seed=3)
    flat = sorted(i for p in parts for i in p)
    assert flat == list(range(len(LABELS))) and all(parts)
    assert dirichlet_partition(LABELS, 10, alpha, seed=3) == parts
    assert dirichlet_partition(LABELS, 10, alpha, seed=4) != parts


def test_dirichlet_label_skew_grows_as_alpha_falls():
    skew = {a: _max_share(dirichlet_partition(LABELS, 10, a, seed=0)) for a in (0.1, 1.0, 10.0)}
    assert skew[0.1] > skew[1.0] > skew[10.0]
    assert skew[0.1] > 0.5 and skew[10.0] < 0.3  # 8 labels: uniform would be 0.125


def test_dirichlet_that_leaves_a_client_empty_says_how_to_fix_it():
    with pytest.raises(PartitionError, match="fewer clients or a larger dirichlet-alpha"):
        dirichlet_partition(["a"] * 30, 25, 0.01, seed=0)


def test_iid_sizes_and_empty_error():
    parts = iid_partition(list(range(103)), 10, seed=1)
    assert sum(map(len, parts)) == 103 and {len(p) for p in parts} == {10, 11}
    assert sorted(x for p in parts for x in p) == list(range(103))
    with pytest.raises(PartitionError, match="use at most 3 clients"):
        iid_partition([1, 2, 3], 4, seed=0)


def test_natural_one_client_per_sorted_id():
    labels = ["user-b", "user-a", "user-c", "user-a", "user-b"]
    assert natural_partition(labels, 3) == [[1, 3], [0, 4], [2]]
    with pytest.raises(PartitionError, match="has 3 .* but there are 2 clients; run with 3"):
        natural_partition(labels, 2)


def test_shards_are_label_sorted_fedit_split():
    parts = shard_partition(LABELS, 4, 2, seed=0)  # 8 shards over 8 equal labels
    assert sorted(i for p in parts for i in p) == list(range(len(LABELS)))
    assert all(len({LABELS[i] for i in p}) == 2 for p in parts)  # each shard one label
    assert shard_partition(LABELS, 4, 2, seed=0) == parts
    with pytest.raises(PartitionError, match="at least 20 examples .* fewer clients"):
        shard_partition(LABELS[:10], 10, 2, seed=0)


def test_partition_of_examples_by_field():
    items = [Example(instruction=f"i{i}", output="o", category=LABELS[i]) for i in range(400)]
    parts = partition(items, 8, seed=0, method="natural")
    assert [{e.category for e in p} for p in parts] == [{f"c{k}"} for k in range(8)]
    assert partition(items, 8, 0, "dirichlet", alpha=0.5) == partition(items, 8, 0,
                                                                       "dirichlet", alpha=0.5)
    unlabeled = [Example(instruction="i", output="o")] * 10
    with pytest.raises(PartitionError, match="no example has one; map a field"):
        partition(unlabeled, 2, 0, "shards")
