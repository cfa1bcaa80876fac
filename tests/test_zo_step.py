"""One ZO step: finite-difference scalar, in-place update, skips that put the weights back."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fedtune.seeded import add_perturbation_, derive_seeds, perturbation, zo_parameters, zo_step
from tests.conftest import tiny_llama

pytestmark = pytest.mark.usefixtures("one_thread")


def ulps(x: torch.Tensor) -> torch.Tensor:
    """Spacing of float32 numbers at |x|."""
    a = x.abs()
    return torch.nextafter(a, torch.full_like(a, math.inf)) - a


def test_quadratic_gives_the_exact_directional_derivative_and_update() -> None:
    # L(w) = |w - t|^2 is quadratic, so the central difference is exact: g = 2 (w - t) . z.
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(50, dtype=torch.float64))
    target = torch.randn(50, dtype=torch.float64)
    w0 = w.detach().clone()
    z = perturbation(77, 0, 50).double()

    res = zo_step([w], lambda: ((w - target) ** 2).sum(), seed=77, seed_index=3, eps=1e-3, lr=0.01)

    expected_g = (2 * (w0 - target) @ z).item()
    assert res.seed_index == 3 and not res.skipped
    assert res.g == pytest.approx(expected_g, rel=1e-9)
    assert torch.allclose(w.detach(), w0 - 0.01 * expected_g * z, rtol=0, atol=1e-12)
    assert res.loss_plus > res.loss_minus if expected_g > 0 else res.loss_plus < res.loss_minus
    assert w.grad is None


def _restore_error_ok(before: torch.Tensor, after: torch.Tensor, eps: float, seed: int) -> bool:
    """Within 3 float32 ulps of max(|w|, 2 eps |z|): the rounding of three in-place passes."""
    z = perturbation(seed, 0, before.numel()).view_as(before)
    scale = torch.maximum(before.abs(), 2 * eps * z.abs())
    return bool(((after - before).abs() <= 3 * ulps(scale)).all())


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_first_loss_skips_without_a_second_forward(bad: float) -> None:
    torch.manual_seed(1)
    w = nn.Parameter(torch.randn(1000))
    before = w.detach().clone()
    calls = []

    def loss() -> float:
        calls.append(1)
        return bad

    res = zo_step([w], loss, seed=5, seed_index=0, eps=1e-3, lr=1.0)
    assert res.skipped and res.g == 0.0 and len(calls) == 1 and math.isnan(res.loss_minus)
    manual = before.clone()
    add_perturbation_([manual], 5, 1e-3)
    add_perturbation_([manual], 5, -1e-3)
    assert torch.equal(w.detach(), manual)  # exactly the +eps, -eps passes: no update leaked
    assert _restore_error_ok(before, w.detach(), 1e-3, 5)


def test_clipped_or_nan_second_loss_restores_the_weights() -> None:
    torch.manual_seed(2)
    w = nn.Parameter(torch.randn(1000))
    before = w.detach().clone()
    losses = iter([10.0, 0.0])  # g = 10 / (2 eps) = 5000 > clip
    res = zo_step([w], lambda: next(losses), seed=9, seed_index=1, eps=1e-3, lr=1.0, clip=100.0)
    assert res.skipped and res.g == 0.0 and (res.loss_plus, res.loss_minus) == (10.0, 0.0)
    manual = before.clone()
    for alpha in (1e-3, -2e-3, 1e-3):
        add_perturbation_([manual], 9, alpha)
    assert torch.equal(w.detach(), manual)
    assert _restore_error_ok(before, w.detach(), 1e-3, 9)

    losses = iter([1.0, math.nan])
    res = zo_step([w], lambda: next(losses), seed=9, seed_index=1, eps=1e-3, lr=1.0)
    assert res.skipped and res.g == 0.0
    assert _restore_error_ok(before, w.detach(), 1e-3, 9)

    # The same losses under the clip are applied: the guard is the clip, not the size.
    losses = iter([1.0, 0.999])
    res = zo_step([w], lambda: next(losses), seed=9, seed_index=1, eps=1e-3, lr=1e-3, clip=100.0)
    assert not res.skipped and res.g == pytest.approx(0.001 / 2e-3)
    assert not torch.allclose(w.detach(), before, rtol=0, atol=1e-5)


@pytest.mark.parametrize("diff", [-0.3, -0.19, 0.0, 0.19, 0.21, 1.0])
def test_clip_on_g_is_the_official_clip_on_the_loss_difference(diff: float) -> None:
    """|g| > c exactly when |L+ - L-| > 2 eps c: zo-clip c is the official grad_clip 2 eps c."""
    eps, clip = 1e-3, 100.0  # the official code's grad_clip = 0.2
    w = nn.Parameter(torch.zeros(10))
    losses = iter([1.0 + diff, 1.0])
    res = zo_step([w], lambda: next(losses), seed=3, seed_index=0, eps=eps, lr=0.0, clip=clip)
    assert res.skipped == (abs(diff) > 2 * eps * clip)
    assert res.g == (0.0 if res.skipped else pytest.approx(diff / (2 * eps)))


def test_loss_decreases_on_a_tiny_llama_without_autograd() -> None:
    model = tiny_llama()
    ids = torch.arange(16).remainder(5).unsqueeze(0).repeat(4, 1)  # a periodic sequence to learn
    grad_modes: list[bool] = []

    def loss() -> torch.Tensor:
        grad_modes.append(torch.is_grad_enabled())
        return model(input_ids=ids, labels=ids).loss

    params = zo_parameters(model)
    seeds = derive_seeds(0, 256)
    with torch.no_grad():
        start = loss().item()
    results = [
        zo_step(params, loss, seed=int(seeds[i % 256]), seed_index=i % 256, eps=1e-3, lr=1e-3)
        for i in range(200)
    ]
    with torch.no_grad():
        end = loss().item()
    assert end < start - 0.5, (start, end)
    assert not any(r.skipped for r in results)
    assert not any(grad_modes)
    assert all(p.grad is None for p in model.parameters())
    assert all(math.isfinite(r.g) and r.loss > 0 for r in results)


def test_rejects_a_bad_eps() -> None:
    with pytest.raises(ValueError, match="eps"):
        zo_step([torch.zeros(3)], lambda: 0.0, seed=1, seed_index=0, eps=0.0, lr=1.0)
