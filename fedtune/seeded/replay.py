"""Float replay of accumulated scalars, seed by seed (Qin et al., ICML 2024).

This was fedtune's definition of a FedKSeed version until versions became exact integer sums
(:mod:`fedtune.seeded.versions`, which the algorithm uses now). It stays as the benchmarks'
"per-seed replay" baseline and as the float path the GPU check compares across devices:

    w = w0 - lr * sum_s A[s] * z(seed_s)

over every seed index s with A[s] != 0, with A float32 and a constant learning rate. Every party
computes it with the same arithmetic, in this order, for each parameter and element:

1. ``acc = 0``; for each nonzero s in ascending seed-index order: ``acc = acc + (A[s] * z_s)``,
   each product and each sum rounded to float32 separately (no fused multiply-add);
2. ``u = acc * lr`` (lr rounded to float32), then ``w = w0 - u`` in float32 (float64 for float64
   weights), cast once to the weights' dtype.

Each step is one correctly rounded IEEE operation per element, so the result does not depend on
chunking, on the number of threads or on the device type. Several seeds are applied per pass over
the weights: every nonzero seed streams through a chunk's float32 accumulator before the chunk is
written back once, and for small parameters z of many seeds is generated in one batch. For
bf16/fp16 weights, pass a float32 copy of w0 (:func:`float32_snapshot`) so that the sum is applied
to exact float32 values and rounded once.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from fedtune.seeded.params import zo_named_parameters
from fedtune.seeded.rng import (
    Workspace,
    check_chunk_size,
    default_chunk_size,
    normal_table,
    perturbations,
)

__all__ = ["float32_snapshot", "replay_"]

W0 = Mapping[str, torch.Tensor] | Sequence[torch.Tensor] | None


def float32_snapshot(
    params: nn.Module | Iterable[torch.Tensor], device: torch.device | str | None = "cpu"
) -> list[torch.Tensor]:
    """Float32 copies of the ZO parameters (the w0 master copy), on ``device`` (None: in place)."""
    tensors = _tensors(params)
    return [
        p.detach().to(device=device or p.device, dtype=torch.float32, copy=True) for p in tensors
    ]


def _tensors(params: nn.Module | Iterable[torch.Tensor]) -> list[torch.Tensor]:
    if isinstance(params, nn.Module):
        return [p for _, p in zo_named_parameters(params)]
    return list(params)


def _check_lr(lr: object) -> float:
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not math.isfinite(float(lr)):
        raise ValueError(
            f"replay needs one constant finite learning rate, got {lr!r}; a schedule is not "
            "supported because w = w0 - lr * sum A_s z_s only holds for a constant lr"
        )
    return float(np.float32(lr))


def _check_vector(a: np.ndarray, seeds: np.ndarray, what: str) -> None:
    if a.dtype != np.float32 or a.ndim != 1:
        raise ValueError(f"{what} must be a 1-D float32 array, got {a.dtype} with shape {a.shape}")
    if seeds.shape != a.shape:
        raise ValueError(f"{what} has {a.size} entries but the pool has {seeds.size} seeds")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{what} contains NaN or Inf")


def _bases(params: nn.Module | Iterable[torch.Tensor], tensors: list[torch.Tensor], w0: W0):
    """w0 tensors aligned with ``tensors`` (None where the parameter itself holds w0)."""
    if w0 is None:
        return [None] * len(tensors)
    if isinstance(w0, Mapping):
        if not isinstance(params, nn.Module):
            raise TypeError("a w0 state dict needs the model (not a tensor list) to match names")
        names = [n for n, _ in zo_named_parameters(params)]
        missing = [n for n in names if n not in w0]
        if missing:
            raise ValueError(f"w0 state has no entry for parameter '{missing[0]}'")
        bases = [w0[n] for n in names]
    else:
        bases = list(w0)
        if len(bases) != len(tensors):
            raise ValueError(f"w0 has {len(bases)} tensors but the model has {len(tensors)}")
    for i, (b, p) in enumerate(zip(bases, tensors, strict=True)):
        if b.shape != p.shape:
            raise ValueError(
                f"w0 tensor {i} has shape {tuple(b.shape)}, parameter has {tuple(p.shape)}"
            )
    return [None if b is p else b for b in bases]


@torch.no_grad()
def _apply(
    tensors: list[torch.Tensor],
    bases: list[torch.Tensor | None],
    coeffs: np.ndarray,
    seeds: np.ndarray,
    lr: float,
    chunk_size: int | None,
) -> None:
    """``w = base - lr * sum_s coeffs[s] z_s`` over nonzero coeffs, in the documented order."""
    check_chunk_size(chunk_size)
    nz = np.flatnonzero(coeffs)
    nz_seeds = [int(seeds[s]) for s in nz]
    nz_values = [float(coeffs[s]) for s in nz]  # exact: float32 -> float
    nz_coeffs: dict[torch.device, torch.Tensor] = {}  # the same as a tensor, once per device
    spaces: dict[tuple[torch.device, int], Workspace] = {}
    for index, (p, base) in enumerate(zip(tensors, bases, strict=True)):
        if not nz.size and base is None:
            continue
        chunk = chunk_size or default_chunk_size(p.device)
        ws = spaces.get((p.device, chunk))
        if ws is None:
            ws = spaces[p.device, chunk] = Workspace(p.device, chunk)
        table = normal_table(p.device)
        flat = p.view(-1) if p.is_contiguous() else p.contiguous().view(-1)
        base_flat = None if base is None else base.reshape(-1)
        work = torch.float64 if p.dtype == torch.float64 else torch.float32
        for start in range(0, flat.numel(), chunk):
            part = flat[start : start + chunk]
            n = part.numel()
            acc = ws.buffer("acc", torch.float32, n).zero_()
            group = chunk // n  # > 1 for small parameters: generate z for many seeds at once
            if group <= 1:
                for seed, value in zip(nz_seeds, nz_values, strict=True):
                    acc.add_(ws.draw(seed, index, start, n, table).mul_(value))
            else:
                if p.device not in nz_coeffs:
                    nz_coeffs[p.device] = torch.from_numpy(coeffs[nz]).to(p.device)
                for g0 in range(0, len(nz_seeds), group):
                    z = perturbations(nz_seeds[g0 : g0 + group], index, n, p.device, offset=start)
                    z.mul_(nz_coeffs[p.device][g0 : g0 + group].unsqueeze(1))
                    for row in z:  # ascending seed index: the documented summation order
                        acc.add_(row)
            acc.mul_(lr)
            if base_flat is None and p.dtype == work:
                part.sub_(acc)
                continue
            w = ws.buffer("weights", work, n)
            w.copy_(part if base_flat is None else base_flat[start : start + n])
            part.copy_(w.sub_(acc if work == torch.float32 else acc.to(work)))
        if not p.is_contiguous():
            p.copy_(flat.view_as(p))


def replay_(
    params: nn.Module | Iterable[torch.Tensor],
    w0_state: W0,
    accumulated: np.ndarray,
    seeds: np.ndarray | Sequence[int],
    lr: float,
    *,
    chunk_size: int | None = None,
) -> None:
    """Set ``params`` to ``w0 - lr * sum_s A[s] z(seeds[s])`` in place.

    ``params``: a model (its ZO parameters) or that tensor list. ``w0_state``: w0 as tensors
    aligned with ``params`` (any device; float32 recommended), a state dict keyed by
    :func:`zo_named_parameters` names (model only), or None when ``params`` hold w0 right now.
    ``accumulated``: A, float32 of length K; ``seeds``: the pool's K seeds.
    """
    lr32 = _check_lr(lr)
    a = np.asarray(accumulated)
    seeds_arr = np.asarray(seeds, dtype=np.int64)
    _check_vector(a, seeds_arr, "A")
    tensors = _tensors(params)
    _apply(tensors, _bases(params, tensors, w0_state), a, seeds_arr, lr32, chunk_size)
