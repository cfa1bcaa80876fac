"""The fused integer kernel is bit-identical to a naive per-seed loop for every backend."""

from __future__ import annotations

import random

import pytest
import torch

from fedtune.seeded import fused, rng
from fedtune.seeded.fused import add_codes_

M64 = (1 << 64) - 1
CPU = torch.device("cpu")


def naive(
    acc: torch.Tensor, seeds: list[int], deltas: list[int], index: int, start: int = 0
) -> torch.Tensor:
    """Per seed: hash, lanes by shifts, gather ZCODE_TABLE, multiply by delta, add (int64)."""
    out, n = acc.clone(), acc.numel()
    for seed, delta in zip(seeds, deltas, strict=True):
        h = rng._hashes([rng.stream_key(seed, index)], start // 4, (n + 3) // 4, acc.device)
        lanes = rng._lanes_by_shifts(h).view(-1)[:n].long()
        out += rng.ZCODE_TABLE.to(acc.device)[lanes] * rng._signed(delta)
    return out


def exact(acc0: int, seeds: list[int], deltas: list[int], index: int, element: int) -> int:
    """One element with unbounded Python integers, reduced mod 2**64 at the end."""
    total = acc0
    for seed, delta in zip(seeds, deltas, strict=True):
        key, gamma = rng.stream_key(seed, index)
        h = rng._mix64(key + (element // 4 + 1) * gamma)
        total += delta * int(rng.ZCODE_TABLE[(h >> (16 * (element % 4))) & 0xFFFF])
    return rng._signed(total)


def backend_or_skip(name: str) -> str:
    if name != "eager" and not fused._ready(name, CPU):
        pytest.skip(f"fused backend {name} unavailable here")
    return name


BACKENDS = ["native", "compiled", "batched", "eager"]


def random_case(r: random.Random) -> tuple[int, list[int], list[int], int, int]:
    n = r.choice([1, 2, 3, 4, 5, 7, 31, 33, 64, 65, 127, 1000, 4099])
    count = r.choice([1, 2, 3, 9, 40])
    seeds = [r.randrange(1, 2**63) for _ in range(count)]
    big = r.random() < 0.3  # full int64 range: sums wrap
    bound = 2**63 if big else 2**40
    deltas = [r.randrange(-bound, bound) for _ in range(count)]
    return n, seeds, deltas, r.randrange(300), 4 * r.randrange(10**7)


@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_naive_reference_on_random_cases(backend: str) -> None:
    backend_or_skip(backend)
    r = random.Random(BACKENDS.index(backend))
    for _ in range(10):
        n, seeds, deltas, index, start = random_case(r)
        acc = torch.randint(-(2**63), 2**63 - 1, (n,), dtype=torch.int64)
        want = naive(acc, seeds, deltas, index, start)
        add_codes_(acc, seeds, deltas, index, start, backend=backend)
        assert torch.equal(acc, want), (backend, n, len(seeds), index, start)


def test_naive_reference_matches_unbounded_integers_and_wraps() -> None:
    seeds, deltas = [5, 2**63 - 1, 77], [2**63 - 1, -(2**63), 12345]
    acc0 = [2**63 - 1, -(2**63), 0, -1, 7, 2**62]
    acc = torch.tensor(acc0, dtype=torch.int64)
    got = naive(acc, seeds, deltas, 3, 400).tolist()
    assert got == [exact(a, seeds, deltas, 3, 400 + e) for e, a in enumerate(acc0)]
    for backend in ("eager", "batched") + (("native",) if fused._ready("native", CPU) else ()):
        out = acc.clone()
        add_codes_(out, seeds, deltas, 3, 400, backend=backend)
        assert out.tolist() == got


@pytest.mark.parametrize("backend", ["native", "batched", "eager"])
def test_chunks_starts_seed_splits_and_order_do_not_matter(backend: str) -> None:
    backend_or_skip(backend)
    r = random.Random(7)
    seeds = [r.randrange(1, 2**63) for _ in range(12)]
    deltas = [r.randrange(-(2**40), 2**40) for _ in range(12)]
    whole = torch.zeros(2_003, dtype=torch.int64)
    add_codes_(whole, seeds, deltas, 9, backend=backend)
    parts = torch.zeros(2_003, dtype=torch.int64)
    for lo, hi in ((0, 4), (4, 1_000), (1_000, 2_003)):  # chunks of the same parameter
        add_codes_(parts[lo:hi], seeds[:5], deltas[:5], 9, start=lo, backend=backend)
        add_codes_(parts[lo:hi], seeds[:4:-1], deltas[:4:-1], 9, start=lo, backend=backend)
    assert torch.equal(whole, parts)
    strided = torch.zeros(4_006, dtype=torch.int64)
    add_codes_(strided[::2], seeds, deltas, 9, backend=backend)  # non-contiguous acc
    assert torch.equal(strided[::2], whole) and not strided[1::2].any()


def test_portable_c_build_gives_the_same_bits(monkeypatch: pytest.MonkeyPatch) -> None:
    backend_or_skip("native")
    portable = fused._native_lib(("",))  # no -march: the plain C loop, as on non-AVX-512 CPUs
    monkeypatch.setattr(fused, "_native_lib", lambda: portable)
    r = random.Random(5)
    for _ in range(5):
        n, seeds, deltas, index, start = random_case(r)
        acc = torch.randint(-(2**63), 2**63 - 1, (n,), dtype=torch.int64)
        want = naive(acc, seeds, deltas, index, start)
        add_codes_(acc, seeds, deltas, index, start, backend="native")
        assert torch.equal(acc, want)


def test_threads_and_backends_agree_on_a_larger_case() -> None:
    r = random.Random(3)
    seeds = [r.randrange(1, 2**63) for _ in range(600)]
    deltas = [r.randrange(-(2**40), 2**40) for _ in range(600)]
    want = torch.zeros(4_097, dtype=torch.int64)
    add_codes_(want, seeds, deltas, 2, 8, backend="eager")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)  # the native kernel splits the elements across 2 threads
        got = torch.zeros(4_097, dtype=torch.int64)
        add_codes_(got, seeds, deltas, 2, 8)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(got, want)


def test_zero_deltas_and_empty_inputs_are_no_ops_and_bad_inputs_raise() -> None:
    acc = torch.arange(10, dtype=torch.int64)
    add_codes_(acc, [1, 2], [0, 0], 0)
    add_codes_(acc, [], [], 0)
    add_codes_(acc, [3], torch.tensor([5]), 0)
    assert torch.equal(acc, naive(torch.arange(10, dtype=torch.int64), [3], [5], 0))
    with pytest.raises(ValueError, match="multiple of 4"):
        add_codes_(acc, [1], [1], 0, start=2)
    with pytest.raises(ValueError, match="int64"):
        add_codes_(acc.float(), [1], [1], 0)
    with pytest.raises(ValueError, match="deltas"):
        add_codes_(acc, [1, 2], [1], 0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("backend", ["auto", "compiled", "eager"])
def test_cuda_gives_the_cpu_bits(backend: str) -> None:
    r = random.Random(11)
    for n in (1, 5, 4_099, 300_001):
        seeds = [r.randrange(1, 2**63) for _ in range(33)]
        deltas = [r.randrange(-(2**63), 2**63) for _ in range(33)]
        cpu = torch.randint(-(2**63), 2**63 - 1, (n,), dtype=torch.int64)
        gpu = cpu.cuda()
        add_codes_(cpu, seeds, deltas, 4, 40, backend="eager")
        add_codes_(gpu, seeds, deltas, 4, 40, backend=backend)
        assert torch.equal(gpu.cpu(), cpu)
