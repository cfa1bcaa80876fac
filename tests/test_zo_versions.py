"""Exact incremental FedKSeed versions: any path through the versions gives the bits of the
direct definition w = float32(float64(w0) - c * S), S = sum_s rint(A_s 2^16) zcode_s."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from fedtune.seeded.rng import perturbation
from fedtune.seeded.versions import A_LIMIT, VersionStore, check_bounds, scale, to_codes

SHAPES = [(37,), (25, 40), (4097,), (3, 5, 7)]
K = 64
SEEDS = np.arange(1, K + 1, dtype=np.int64) * 7919 + 13
LR = 3e-4


def w0() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(s, generator=gen) * 0.1 for s in SHAPES]


def definition(accumulated: np.ndarray) -> list[torch.Tensor]:
    """The model of ``accumulated`` straight from its definition (numpy int64 sums)."""
    codes = to_codes(accumulated)
    out = []
    for index, base in enumerate(w0()):
        s = np.zeros(base.numel(), dtype=np.int64)
        for seed, code in zip(SEEDS, codes, strict=True):
            if code:
                z = perturbation(int(seed), index, base.numel()).double() * 4096
                s += code * z.round().long().numpy()
        w = base.reshape(-1).double().numpy() - scale(LR) * s.astype(np.float64)
        out.append(torch.from_numpy(w.astype(np.float32)).reshape(base.shape))
    return out


def history(rounds: int = 6, seed: int = 0) -> list[np.ndarray]:
    """Versions A_0 = 0, A_1, ...: each round adds scalars on a few random seeds."""
    rng = np.random.default_rng(seed)
    a = np.zeros(K, np.float32)
    out = [a.copy()]
    for _ in range(rounds):
        touched = rng.choice(K, size=rng.integers(1, 12), replace=False)
        a[touched] += rng.normal(0, 3, touched.size).astype(np.float32)
        out.append(a.copy())
    return out


def store(tmp_path=None, chunk: int = 1000) -> tuple[VersionStore, list[torch.Tensor]]:
    params = w0()
    return VersionStore(params, SEEDS, LR, tmp_path, chunk=chunk), params


def test_catch_up_from_every_earlier_version_equals_the_definition(tmp_path):
    versions = history()
    final = definition(versions[-1])
    direct, params = store(tmp_path / "direct")
    assert direct.load(versions[-1]) == int((to_codes(versions[-1]) != 0).sum())
    for got, want in zip(params, final, strict=True):
        assert torch.equal(got, want)
    for start in range(len(versions) - 1):
        st, params = store(tmp_path / f"from{start}", chunk=512 if start % 2 else 4096)
        st.load(versions[start])
        changed = int((to_codes(versions[-1]) != to_codes(versions[start])).sum())
        assert st.load(versions[-1]) == changed  # only the seeds whose value changed
        for got, want in zip(params, final, strict=True):
            assert torch.equal(got, want), f"catch-up from version {start} differs"


def test_restore_undoes_local_steps_exactly_and_w0_round_trips():
    versions = history(3, seed=1)
    st, params = store()
    st.load(versions[-1])
    want = [p.clone() for p in params]
    for p in params:  # local ZO steps move the weights in place
        p.add_(torch.randn_like(p) * 1e-3)
    st.mark_changed()
    st.restore()
    assert all(torch.equal(a, b) for a, b in zip(params, want, strict=True))
    st.load_w0()
    assert all(torch.equal(a, b) for a, b in zip(params, w0(), strict=True))
    assert st.load(versions[-1]) == 0  # same version: nothing to apply, weights restored
    assert all(torch.equal(a, b) for a, b in zip(params, want, strict=True))


def test_a_version_published_by_one_process_is_adopted_by_another(tmp_path):
    versions = history(4, seed=2)
    first, _ = store(tmp_path)
    first.load(versions[3])
    first.publish(tmp_path / "S-v3.i64")
    second, params = store(tmp_path)
    second.adopt(np.load(tmp_path / "S-v3.codes.npy"), tmp_path / "S-v3.i64")
    assert second.load(versions[4]) == int((to_codes(versions[4]) != to_codes(versions[3])).sum())
    assert all(torch.equal(a, b) for a, b in zip(params, definition(versions[4]), strict=True))
    assert len(list(tmp_path.glob("w0-*.f32"))) == 1  # w0 written once per model


def test_bounds_and_bad_vectors_are_refused():
    with pytest.raises(ValueError, match="exact-version limit"):
        to_codes(np.array([A_LIMIT], np.float32))
    with pytest.raises(ValueError, match="NaN"):
        to_codes(np.array([np.nan], np.float32))
    check_bounds(4096)
    with pytest.raises(ValueError, match="overflow"):
        check_bounds(1 << 16)
    st, _ = store()
    with pytest.raises(ValueError, match="pool has 64"):
        st.load(np.zeros(K + 1, np.float32))


def test_concurrent_loads_of_one_version_compute_it_once(tmp_path):
    """Processes sharing a cache take a lock per version: the second adopts the first's."""
    from fedtune.algorithms.fedkseed.model import ZOModel

    versions = history(2, seed=3)
    models = []
    for _ in range(2):
        st, params = store(tmp_path / "cache")
        models.append(ZOModel(model=None, tokenizer=None, params=params, seeds=SEEDS, lr=LR,
                              eps=1e-3, store=st, identity={"model": "m", "lr": str(LR),
                                                            "eps": "0.001", "pool": "1"}))
    threads = [threading.Thread(target=m.load, args=(versions[-1], tmp_path / "cache"))
               for m in models]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(m.applied[-1] for m in models) == [0, int((to_codes(versions[-1]) != 0).sum())]
    want = definition(versions[-1])
    for m in models:
        assert all(torch.equal(a, b) for a, b in zip(m.params, want, strict=True))


@pytest.mark.gpu
def test_a_version_on_cuda_has_the_bits_of_the_cpu_one():
    versions = history(4, seed=4)
    cpu, params_cpu = store()
    cpu.load(versions[2])
    cpu.load(versions[4])  # via an intermediate version on the CPU ...
    params = [p.cuda() for p in w0()]
    VersionStore(params, SEEDS, LR).load(versions[4])  # ... directly on the GPU
    for a, b in zip(params, params_cpu, strict=True):
        assert torch.equal(a.cpu(), b)


def test_the_documented_quantisation_bound_is_the_one_the_constants_give():
    """docs/fedkseed.md and the module's docstring state the bound; it is recomputed here from
    the store's quantum, the table's max |z| and K, and a random A's rounding stays within it."""
    from pathlib import Path

    from fedtune.seeded import versions
    from fedtune.seeded.rng import Z_FRAC_BITS, ZCODE_TABLE

    k = 4096
    max_z = int(ZCODE_TABLE.abs().max()) / 2**Z_FRAC_BITS
    worst, rms = versions.quantisation_error(k)
    assert worst == k * 2.0 ** -(versions.A_FRAC_BITS + 1) * max_z
    assert f"{worst:.3g}" == "0.135" and f"{rms:.2g}" == "0.00028"
    readme = (Path(__file__).parents[1] / "docs" / "fedkseed.md").read_text()
    doc = " ".join(versions.__doc__.split())
    assert f"{max_z:.4g}" in doc and "0.135 * lr at K = 4096" in doc and "2.8e-4 * lr" in doc
    assert "= 0.135·lr at K = 4096" in readme and "RMS 2.8e-4·lr" in readme
    assert "1.4e-3" not in doc and "1.4e-3·lr" not in readme
    # the rounding of a random A on a few weights: its error against lr * sum A z
    rng = np.random.default_rng(0)
    a = rng.normal(0, 50, k)
    err_a = to_codes(a) * 2.0**-versions.A_FRAC_BITS - a
    z = torch.stack([perturbation(s, 0, 256) for s in range(k)]).double().numpy()
    err = err_a @ z  # per weight, in units of lr
    assert np.abs(err).max() < worst
    assert 0.8 * rms < float(np.sqrt((err**2).mean())) < 1.2 * rms


def test_the_largest_pool_the_store_takes_is_the_configs_limit():
    from fedtune.algorithms.fedkseed.config import MAX_ZO_SEEDS
    from fedtune.seeded.versions import max_seeds

    assert max_seeds() == MAX_ZO_SEEDS == 7576
    check_bounds(MAX_ZO_SEEDS)
    with pytest.raises(ValueError, match="overflow"):
        check_bounds(MAX_ZO_SEEDS + 1)
