"""Replay w = w0 - lr * sum_s A_s z_s: exact, order-fixed, equal to FedAvg of client deltas."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fedtune.seeded import (
    accumulate_,
    derive_seeds,
    float32_snapshot,
    perturbation,
    replay_,
    sample_seed_indices,
    zo_parameters,
    zo_step,
)

K = 64
SEEDS = derive_seeds(11, K)


pytestmark = pytest.mark.usefixtures("one_thread")


def some_params(dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    shapes = [(300, 17), (5,), (3, 3), (40_000,), (1,)]
    return [(0.1 * torch.randn(s, generator=g)).to(dtype) for s in shapes]


def some_accumulated(seed: int = 0) -> np.ndarray:
    a = np.random.default_rng(seed).normal(size=K).astype(np.float32)
    a[::3] = 0.0  # zero entries are skipped
    return a


def naive_replay(w0: list[torch.Tensor], a: np.ndarray, lr: float) -> list[torch.Tensor]:
    """The documented arithmetic, one whole tensor and one seed at a time."""
    out = []
    for i, base in enumerate(w0):
        acc = torch.zeros(base.numel())
        for s in np.flatnonzero(a):  # ascending seed index
            acc = acc + perturbation(int(SEEDS[s]), i, base.numel()) * torch.tensor(a[s])
        out.append(base.float() - (acc * torch.tensor(np.float32(lr))).view_as(base))
    return out


def test_replay_is_bit_identical_across_calls_chunkings_and_a_naive_loop() -> None:
    w0 = some_params()
    a = some_accumulated()
    first = some_params()
    replay_(first, w0, a, SEEDS, 3e-3)
    second = [torch.full_like(t, 7.0) for t in w0]  # the start value must not matter
    replay_(second, w0, a, SEEDS, 3e-3, chunk_size=4096)
    in_place = [t.clone() for t in w0]
    replay_(in_place, None, a, SEEDS, 3e-3, chunk_size=1000)  # params hold w0
    reference = naive_replay(w0, a, 3e-3)
    for x, y, z, ref in zip(first, second, in_place, reference, strict=True):
        assert torch.equal(x, ref) and torch.equal(y, ref) and torch.equal(z, ref)
    assert not torch.equal(first[0], w0[0])


CHILD = """
import hashlib, sys, torch
torch.set_num_threads(int(sys.argv[1]))
sys.path.insert(0, sys.argv[2])
from test_zo_replay import SEEDS, some_accumulated, some_params
from fedtune.seeded import replay_
params = some_params()
replay_(params, some_params(), some_accumulated(), SEEDS, 3e-3)
print(hashlib.sha256(b"".join(p.numpy().tobytes() for p in params)).hexdigest())
"""


def test_replay_is_bit_identical_in_another_process_with_more_threads() -> None:
    child = subprocess.run(
        [sys.executable, "-c", CHILD, "2", str(Path(__file__).parent)],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout.strip()
    params = some_params()  # here: one thread (the autouse fixture)
    replay_(params, some_params(), some_accumulated(), SEEDS, 3e-3)
    assert child == hashlib.sha256(b"".join(p.numpy().tobytes() for p in params)).hexdigest()


def test_replay_takes_a_state_dict_keyed_by_parameter_names() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    w0 = {k: v.clone() for k, v in model.state_dict().items()}
    a = some_accumulated(1)
    replay_(model, w0, a, SEEDS, 0.01)
    want = naive_replay([w0[k] for k in ("0.weight", "0.bias", "2.weight", "2.bias")], a, 0.01)
    for p, ref in zip(zo_parameters(model), want, strict=True):
        assert torch.equal(p.detach(), ref)
    assert all(p.grad is None for p in model.parameters())


def test_constant_lr_replay_equals_fedavg_of_client_deltas() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
    params = zo_parameters(model)
    w0 = float32_snapshot(params)
    lr, eps, examples = 2e-3, 1e-3, [10, 30, 60]
    a = np.zeros(K, dtype=np.float32)
    finals = []
    for client, n in enumerate(examples):
        with torch.no_grad():
            for p, base in zip(params, w0, strict=True):
                p.copy_(base)
        x = torch.randn(n, 8)
        y = x.sum(1, keepdim=True) * (client + 1)
        idx = sample_seed_indices(K, 30, np.random.default_rng([11, 1, client]))
        scalars = [
            zo_step(
                params,
                lambda x=x, y=y: ((model(x) - y) ** 2).mean(),
                seed=int(SEEDS[i]),
                seed_index=int(i),
                eps=eps,
                lr=lr,
            ).g
            for i in idx
        ]
        finals.append([p.detach().clone() for p in params])
        accumulate_(a, idx, np.array(scalars), n / sum(examples))
    replay_(params, w0, a, SEEDS, lr)
    for i, p in enumerate(params):
        deltas = [n / sum(examples) * (f[i] - w0[i]) for n, f in zip(examples, finals, strict=True)]
        fedavg = w0[i] + sum(deltas)
        assert (fedavg - w0[i]).abs().max() > 0.05  # the clients really moved
        # |w| < 1 here: 1e-6 is ~16 float32 ulps, the rounding of the clients' in-place steps
        assert torch.allclose(p.detach(), fedavg, rtol=0, atol=1e-6)


def test_bf16_model_moves_by_updates_below_its_rounding_step() -> None:
    w0_bf16 = [torch.full((2000,), 0.3, dtype=torch.bfloat16)]
    master = float32_snapshot(w0_bf16)
    lr = 2e-4  # one seed moves w by < 4.4 lr < 9.8e-4, bf16's half-spacing at 0.3
    a = np.ones(K, dtype=np.float32)

    one_by_one = [w0_bf16[0].clone()]
    for s in range(K):  # incremental bf16 updates are each rounded away
        old = np.zeros(K, dtype=np.float32)
        new = old.copy()
        new[s] = 1.0
        replay_(one_by_one, None, new - old, SEEDS, lr)  # in place from the current weights
    assert torch.equal(one_by_one[0], w0_bf16[0])

    params = [w0_bf16[0].clone()]
    replay_(params, master, a, SEEDS, lr)
    assert params[0].dtype == torch.bfloat16
    assert (params[0] != w0_bf16[0]).float().mean() > 0.4  # 64 seeds: std 1.6e-3
    assert torch.equal(params[0], naive_replay(master, a, lr)[0].to(torch.bfloat16))


@pytest.mark.parametrize("lr", [[1e-3, 1e-4], lambda r: 1e-3, np.array([1e-3]), True, float("nan")])
def test_a_learning_rate_schedule_is_refused(lr: object) -> None:
    with pytest.raises(ValueError, match="constant"):
        replay_(some_params(), None, some_accumulated(), SEEDS, lr)  # type: ignore[arg-type]


def test_bad_inputs_are_refused_with_clear_errors() -> None:
    a = some_accumulated()
    with pytest.raises(ValueError, match="63 entries but the pool has 64"):
        replay_(some_params(), None, a[:-1], SEEDS, 1e-3)
    with pytest.raises(ValueError, match="float32"):
        replay_(some_params(), None, a.astype(np.float64), SEEDS, 1e-3)
    a_nan = a.copy()
    a_nan[4] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        replay_(some_params(), None, a_nan, SEEDS, 1e-3)
    with pytest.raises(ValueError, match="w0 has 4 tensors"):
        replay_(some_params(), some_params()[:4], a, SEEDS, 1e-3)
    with pytest.raises(ValueError, match="shape"):
        replay_(some_params(), [t.view(-1) for t in some_params()], a, SEEDS, 1e-3)
    with pytest.raises(TypeError, match="state dict"):
        replay_(some_params(), {"x": torch.zeros(1)}, a, SEEDS, 1e-3)
    with pytest.raises(ValueError, match="'0.bias'"):
        replay_(nn.Sequential(nn.Linear(2, 2)), {"0.weight": torch.zeros(2, 2)}, a, SEEDS, 1e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_replay_is_bit_identical_to_cpu() -> None:
    w0 = some_params()
    a = some_accumulated()
    cpu = [t.clone() for t in w0]
    gpu = [t.cuda() for t in w0]
    replay_(cpu, w0, a, SEEDS, 3e-3)
    replay_(gpu, w0, a, SEEDS, 3e-3)  # w0 on the CPU, weights on the GPU
    for x, y in zip(cpu, gpu, strict=True):
        assert torch.equal(x, y.cpu())
