"""Seed pool, FedKSeed-Pro probabilities, and the byte formats of seeds and scalars."""

from __future__ import annotations

import numpy as np
import pytest

from fedtune.algorithms.fedkseed.pro import encode_importance, probabilities_from
from fedtune.seeded.pool import (
    PRO_CLIP,
    SeedPool,
    accumulate_,
    derive_seeds,
    pack_pairs,
    sample_seed_indices,
    unpack_pairs,
)


def test_seeds_are_deterministic_distinct_int63() -> None:
    seeds = derive_seeds(42, 4096)
    assert seeds.dtype == np.int64 and seeds.shape == (4096,)
    assert np.unique(seeds).size == 4096 and seeds.min() > 0
    assert np.array_equal(seeds, derive_seeds(42, 4096))
    assert np.array_equal(derive_seeds(42, 10), seeds[:10])  # a prefix does not depend on K
    assert not np.array_equal(derive_seeds(43, 10), seeds[:10])
    # Pinned: the pool is part of every stored FedKSeed model.
    assert derive_seeds(0, 2).tolist() == [
        0xE220A8397B1DCDAF >> 1,  # the published SplitMix64 outputs for seed 0
        0x6E789E6AA1B965F4 >> 1,
    ]
    with pytest.raises(ValueError, match="K >= 1"):
        derive_seeds(0, 0)


def probabilities(pool: SeedPool) -> np.ndarray:
    """FedKSeed-Pro's sampling probabilities as clients compute them from the wire."""
    return probabilities_from(encode_importance(pool), pool.k)


def test_sampling_is_reproducible_from_the_generator_seed() -> None:
    pool = SeedPool.from_run_seed(7, 64)

    def draw(round_: int, node: int, pro: bool = False) -> np.ndarray:
        probs = probabilities(pool) if pro else None
        return sample_seed_indices(64, 200, np.random.default_rng([7, round_, node]), probs)

    assert np.array_equal(draw(3, 1), draw(3, 1))
    assert not np.array_equal(draw(3, 1), draw(3, 2))
    assert not np.array_equal(draw(3, 1), draw(4, 1))
    assert draw(3, 1).dtype == np.int64 and draw(3, 1).min() >= 0 and draw(3, 1).max() < 64
    pool.update(np.arange(64), np.linspace(0, 5, 64))
    assert np.array_equal(draw(3, 1, pro=True), draw(3, 1, pro=True))
    counts = np.bincount(
        sample_seed_indices(64, 20_000, np.random.default_rng(0)), minlength=64
    )  # uniform: every seed near 20000 / 64 = 312
    assert counts.min() > 230 and counts.max() < 400


def test_pro_prefers_seeds_with_larger_scalars() -> None:
    pool = SeedPool(np.arange(1, 9), clip=PRO_CLIP)
    pool.update([0, 1, 1, 2, 3], [0.5, 2.0, -4.0, 1e6, -0.1])
    # importance = sum |clip(g)| / (count + 1): the history starts with one 0.0 entry
    want = np.array([0.25, 6.0 / 3, 1000.0 / 2, 0.05, 0, 0, 0, 0])
    assert np.allclose(pool.importance(), want)
    assert pool.importance()[4:].tolist() == [0.0] * 4  # never drawn: exactly 0.0
    p = probabilities(pool)  # what clients sample with: the importance quantised to 8 bits
    assert p.shape == (8,) and abs(float(p.sum()) - 1.0) < 1e-12
    assert np.argmax(p) == 2 and p[1] > p[4]  # 1-byte resolution: 0.25 and 0.05 round to 0
    assert p[4] == p[7] and p[4] == p.min()
    # softmax of values in [0, 1]: the most important seed is e times as likely as the least
    assert p.max() / p.min() == pytest.approx(np.e, rel=1e-12)
    draws = np.bincount(sample_seed_indices(8, 20_000, np.random.default_rng(1), p),
                        minlength=8)
    assert draws[2] > draws[5] * 2


def test_equal_importance_gives_uniform_probabilities() -> None:
    pool = SeedPool.from_run_seed(1, 100)
    np.testing.assert_allclose(probabilities(pool), np.full(100, 0.01), rtol=1e-12)
    pool.update(np.arange(100), np.full(100, -3.0))
    np.testing.assert_allclose(probabilities(pool), np.full(100, 0.01), rtol=1e-12)


def test_pool_state_round_trips_and_bad_updates_are_refused() -> None:
    pool = SeedPool.from_run_seed(5, 32)
    pool.update([1, 2, 2], [1.0, -2.0, 3.0])
    again = SeedPool.from_state_dict(pool.state_dict())
    assert np.array_equal(probabilities(again), probabilities(pool))
    assert np.array_equal(again.counts, pool.counts) and again.counts.dtype == np.int64
    with pytest.raises(ValueError, match=r"\[0, 32\)"):
        pool.update([32], [1.0])
    with pytest.raises(ValueError, match="finite"):
        pool.update([0], [np.nan])
    with pytest.raises(ValueError, match="equal length"):
        pool.update([0, 1], [1.0])
    with pytest.raises(ValueError, match="distinct"):
        SeedPool([3, 3])
    with pytest.raises(ValueError, match="probabilities"):
        sample_seed_indices(4, 3, np.random.default_rng(0), np.array([0.5, 0.5]))


@pytest.mark.parametrize(("k", "width"), [(4096, 6), (65536, 6), (70_000, 8)])
def test_pairs_round_trip(k: int, width: int) -> None:
    rng = np.random.default_rng(k)
    idx = rng.integers(0, k, 200)
    vals = rng.normal(size=200).astype(np.float32)
    data = pack_pairs(idx, vals, k)
    assert len(data) == 200 * width  # K = 4096: 1,200 bytes for tau = 200 steps
    got_idx, got_vals = unpack_pairs(data, k)
    assert np.array_equal(got_idx, idx) and got_idx.dtype == np.int64
    assert np.array_equal(got_vals, vals) and got_vals.dtype == np.float32
    assert unpack_pairs(b"", k)[0].size == 0


def test_pairs_are_little_endian_and_validated() -> None:
    data = pack_pairs([1, 258], np.array([1.0, -2.0], dtype=np.float32), 4096)
    assert data == bytes([1, 0, 2, 1]) + bytes.fromhex("0000803f000000c0")
    with pytest.raises(ValueError, match="multiple of 6 bytes"):
        unpack_pairs(data[:-1], 4096)
    with pytest.raises(ValueError, match=r"\[0, 100\)"):
        unpack_pairs(pack_pairs([150], np.ones(1, np.float32), 200), 100)
    nan = bytes([0, 0]) + np.float32(np.nan).tobytes()
    with pytest.raises(ValueError, match="finite"):
        unpack_pairs(nan, 4096)


def test_accumulate_weights_each_clients_scalars() -> None:
    a = np.zeros(6, dtype=np.float32)
    accumulate_(a, [0, 2, 2, 5], [1.0, 2.0, 3.0, -1.0], 0.25)
    accumulate_(a, [2, 3], [4.0, 8.0], 0.75)
    assert np.array_equal(a, np.array([0.25, 0, 1.25 + 3.0, 6.0, 0, -0.25], dtype=np.float32))
    with pytest.raises(ValueError, match="float32"):
        accumulate_(np.zeros(6), [0], [1.0], 1.0)
