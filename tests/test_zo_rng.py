"""z(seed) is exact, device/dtype/process independent, and looks standard normal."""

from __future__ import annotations

import hashlib
import random
import subprocess
import sys

import pytest
import torch
from torch import nn

from fedtune.seeded import rng
from fedtune.seeded.params import zo_named_parameters, zo_parameters
from fedtune.seeded.rng import (
    NORMAL_TABLE,
    ZCODE_TABLE,
    add_perturbation_,
    perturbation,
    perturbations,
    stream_key,
)

M64 = (1 << 64) - 1


def reference_z(seed: int, index: int, element: int) -> float:
    """Pure-Python (unbounded integer) version of the generator, one element at a time."""
    key, gamma = stream_key(seed, index)
    h = rng._mix64((key + (element // 4 + 1) * gamma) & M64)
    return NORMAL_TABLE[(h >> (16 * (element % 4))) & 0xFFFF].item()


def test_table_is_pinned_symmetric_and_standardised() -> None:
    digest = hashlib.sha256(NORMAL_TABLE.numpy().tobytes()).hexdigest()
    assert digest == "a462f67cf6a4568a8a1f5c39bb4fd66e63e78c024417e98dbd7455f891b342b4"
    assert NORMAL_TABLE.dtype == torch.float32 and NORMAL_TABLE.numel() == 65536
    assert torch.equal(NORMAL_TABLE, -NORMAL_TABLE.flip(0))
    assert bool((NORMAL_TABLE[1:] >= NORMAL_TABLE[:-1]).all())
    assert abs(NORMAL_TABLE.double().pow(2).mean().item() - 1.0) < 2e-6
    assert torch.equal(NORMAL_TABLE * 4096, ZCODE_TABLE.to(torch.float32))  # exact codes


def test_golden_values_never_change() -> None:
    # Any change here silently forks every model replayed from stored seeds and scalars.
    # (Re-recorded once, when z became a multiple of 2**-12 for exact integer versions.)
    assert (perturbation(1234, 0, 8) * 4096).tolist() == [
        -1712.0, -9538.0, 4227.0, -825.0, -4447.0, -4821.0, -2409.0, 5711.0]
    assert (perturbation(2**62 + 5, 17, 4, offset=1000003) * 4096).tolist() == [
        -1425.0, 1128.0, -9788.0, -3825.0]


def test_matches_unbounded_integer_reference() -> None:
    rnd = random.Random(0)
    for _ in range(20):
        seed = rnd.randrange(2**63)
        index = rnd.randrange(500)
        offset = rnd.randrange(10**7)
        n = rnd.randrange(1, 13)
        got = perturbation(seed, index, n, offset=offset).tolist()
        assert got == [reference_z(seed, index, offset + e) for e in range(n)]


def test_lane_extraction_is_endianness_independent() -> None:
    h = rng._hashes([stream_key(3, 1), stream_key(4, 2)], 5, 1000, torch.device("cpu"))
    assert torch.equal(rng._lanes(h), rng._lanes_by_shifts(h))


def test_ranges_batches_and_chunks_give_the_same_values() -> None:
    full = perturbation(99, 3, 10_001)
    assert torch.equal(perturbation(99, 3, 4_003, offset=5_001), full[5_001:9_004])
    batch = perturbations([99, 7, 99], 3, 2_001, offset=6)
    assert torch.equal(batch[0], full[6:2_007])
    assert torch.equal(batch[2], batch[0])
    assert torch.equal(batch[1], perturbation(7, 3, 2_007)[6:])
    a, b = torch.zeros(10_001), torch.zeros(10_001)
    add_perturbation_([a], 99, 1.0)
    add_perturbation_([torch.zeros(5), b], 99, 1.0, chunk_size=8)  # b is parameter index 1
    assert torch.equal(a, perturbation(99, 0, 10_001))
    assert torch.equal(b, perturbation(99, 1, 10_001))


@pytest.mark.parametrize("chunk_size", [64, 1 << 20])
def test_batched_small_parameters_match_one_by_one(chunk_size: int) -> None:
    sizes = [1, 3, 4, 5, 17, 100, 3000, 2, 9]
    dtypes = [torch.float32, torch.bfloat16, torch.float64]
    params = [torch.zeros(n, dtype=dtypes[i % 3]) for i, n in enumerate(sizes)]
    add_perturbation_(params, 31, -0.5, chunk_size=chunk_size)
    for i, (p, n) in enumerate(zip(params, sizes, strict=True)):
        want = perturbation(31, i, n).to(p.dtype if p.dtype == torch.float64 else torch.float32)
        assert torch.equal(p, (want * -0.5).to(p.dtype)), f"parameter {i}"


def test_seeds_and_parameter_indices_give_different_streams() -> None:
    base = perturbation(1, 0, 4096)
    assert not torch.equal(base, perturbation(2, 0, 4096))
    assert not torch.equal(base, perturbation(1, 1, 4096))
    assert not torch.equal(base, perturbation(1 + 2**64, 1, 4096))  # seeds are taken mod 2**64
    assert torch.equal(base, perturbation(1 + 2**64, 0, 4096))


CHILD = """
import hashlib, sys, torch
torch.set_num_threads(1)
from fedtune.seeded.rng import add_perturbation_, perturbation
h = hashlib.sha256()
for index, numel in [(0, 7), (1, 4096), (5, 300_001)]:
    h.update(perturbation(2**40 + 3, index, numel).numpy().tobytes())
params = [torch.linspace(-1, 1, 1000), torch.linspace(-1, 1, 999).to(torch.bfloat16)]
add_perturbation_(params, 11, 0.25)
h.update(params[0].numpy().tobytes()); h.update(params[1].float().numpy().tobytes())
print(h.hexdigest())
"""


def test_identical_in_another_process_with_other_threads() -> None:
    out = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, check=True, timeout=300
    )
    h = hashlib.sha256()
    for index, numel in [(0, 7), (1, 4096), (5, 300_001)]:
        h.update(perturbation(2**40 + 3, index, numel).numpy().tobytes())
    params = [torch.linspace(-1, 1, 1000), torch.linspace(-1, 1, 999).to(torch.bfloat16)]
    add_perturbation_(params, 11, 0.25)
    h.update(params[0].numpy().tobytes())
    h.update(params[1].float().numpy().tobytes())
    assert out.stdout.strip() == h.hexdigest()


@pytest.mark.parametrize("chunk_size", [None, 64])  # batched small-parameter path, chunked path
def test_z_is_the_same_for_every_dtype_before_the_cast(chunk_size: int | None) -> None:
    torch.manual_seed(0)
    w = torch.randn(3000)
    z = perturbation(5, 0, 3000)
    alpha = 0.003
    for dtype in (torch.bfloat16, torch.float16):
        p = w.to(dtype)
        before = p.clone()
        add_perturbation_([p], 5, alpha, chunk_size=chunk_size)
        assert torch.equal(p, (before.float() + z * alpha).to(dtype))
    p32 = w.clone()
    add_perturbation_([p32], 5, alpha, chunk_size=chunk_size)
    assert torch.equal(p32, w + z * alpha)
    p64 = w.double()
    add_perturbation_([p64], 5, alpha, chunk_size=chunk_size)
    assert torch.equal(p64, w.double() + z.double() * alpha)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_is_bit_identical_to_cpu() -> None:
    for seed, index, n, offset in [(1, 0, 7, 0), (2**62, 3, 3_000_001, 5), (77, 200, 65_536, 4)]:
        assert torch.equal(
            perturbation(seed, index, n, "cuda", offset=offset).cpu(),
            perturbation(seed, index, n, offset=offset),
        )
    assert torch.equal(
        perturbations([1, 2, 3], 4, 999, "cuda").cpu(), perturbations([1, 2, 3], 4, 999)
    )
    w = [torch.linspace(-1, 1, 5000), torch.linspace(-2, 2, 77)]
    on_gpu = [t.cuda() for t in w]
    add_perturbation_(w, 9, -1e-3)
    add_perturbation_(on_gpu, 9, -1e-3)
    for a, b in zip(w, on_gpu, strict=True):
        assert torch.equal(a, b.cpu())


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(16, 8)
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 16, bias=False)
        self.head.weight = self.embed.weight  # the same Parameter under two names
        self.alias = nn.Parameter(self.norm.weight.data)  # another Parameter on the same memory
        self.frozen = nn.Parameter(torch.ones(3), requires_grad=False)


def test_tied_and_aliased_weights_are_perturbed_once_and_frozen_ones_never() -> None:
    model = Tied()
    names = [n for n, _ in zo_named_parameters(model)]
    assert names == ["alias", "embed.weight", "norm.bias"]  # named_parameters order
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    add_perturbation_(model, 8, 1.0)
    assert torch.equal(model.norm.weight, perturbation(8, 0, 8))
    assert torch.equal(model.embed.weight.view(-1), perturbation(8, 1, 128))
    assert torch.equal(model.head.weight.view(-1), perturbation(8, 1, 128))
    assert torch.equal(model.frozen, torch.zeros(3))


def test_tiny_llama_with_tied_embeddings_lists_each_weight_once() -> None:
    from tests.conftest import tiny_llama

    model = tiny_llama(tied=True)
    names = [n for n, _ in zo_named_parameters(model)]
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert "lm_head.weight" not in names and names[0] == "model.embed_tokens.weight"
    assert sum(p.numel() for p in zo_parameters(model)) == sum(
        p.numel() for p in model.parameters()
    )


def test_looks_standard_normal_and_uncorrelated() -> None:
    n = 1 << 20
    z = perturbation(123, 0, n).double()
    assert abs(z.mean().item()) < 5e-3
    assert abs(z.std().item() - 1.0) < 5e-3
    assert abs(((z**4).mean() - 3.0).item()) < 0.05  # kurtosis of a normal
    for other in (perturbation(124, 0, n), perturbation(123, 1, n)):
        assert abs((z * other.double()).mean().item()) < 5e-3
    for lag in (1, 2, 3, 4):  # neighbours share a hash: their lanes must still be independent
        assert abs((z[:-lag] * z[lag:]).mean().item()) < 5e-3


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="index"):
        perturbation(1, -1, 4)
    with pytest.raises(ValueError, match="numel"):
        perturbation(1, 0, -4)
    with pytest.raises(ValueError, match="chunk_size"):
        add_perturbation_([torch.zeros(4)], 1, 1.0, chunk_size=6)
