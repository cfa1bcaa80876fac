"""The GPU check's plan (what runs where, how big), its result type, and its first group:
(a) z, the float replay, ``add_codes_`` and exact versions are bit-identical on CPU and
CUDA (``simulations/gpu_check.py`` runs it with the other groups and reports)."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # tests.inprocess_grid and the apps, from a checkout
    sys.path.insert(0, str(ROOT))

from fedtune.seeded import (  # noqa: E402
    derive_seeds,
    float32_snapshot,
    perturbations,
    replay_,
)
from fedtune.seeded.rng import Z_FRAC_BITS  # noqa: E402

Z_SCALE = 1 << Z_FRAC_BITS  # z = zcode / 4096 exactly



@dataclass
class Result:
    """One check's outcome: status is pass, fail, skip or error (the check itself raised)."""

    check: str
    status: str
    summary: str
    seconds: float = 0.0
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Plan:
    """Where the second half of each comparison runs, and how big everything is."""

    other: str  # "cuda", or "cpu" in the dry run
    dry_run: bool
    z_numel: int  # elements of z compared per (seed, parameter)
    z_chunk: int  # chunk of the chunked route
    codes_numel: int  # integer sums compared in the add_codes_ check
    replay_k: int  # seeds in the pool of the replay check (about half of A nonzero)
    replay_shapes: tuple[tuple[int, ...], ...]  # weights replayed; () = the tiny model's
    rounds: int
    local_steps: int
    zo_steps: int
    examples: int  # per client
    eval_examples: int
    bench_tensors: tuple[int, ...]  # tensor sizes of the throughput checks
    bench_seeds: int
    repeats: int
    ray_timeout: float


def plan_for(dry_run: bool) -> Plan:
    """The CUDA check's sizes (a few minutes on one GPU), or the dry run's (seconds on a CPU)."""
    if dry_run:
        return Plan("cpu", True, z_numel=4_003, z_chunk=1_024, codes_numel=4_003, replay_k=16,
                    replay_shapes=((300, 17), (17,), (3, 5, 7), (2, 2_500)), rounds=1,
                    local_steps=2, zo_steps=4, examples=8, eval_examples=4,
                    bench_tensors=(1 << 14, 1 << 10), bench_seeds=2, repeats=1, ray_timeout=0.0)
    return Plan("cuda", False, z_numel=(1 << 22) + 3, z_chunk=1 << 20, codes_numel=1 << 20,
                replay_k=256, replay_shapes=(), rounds=3, local_steps=10, zo_steps=100,
                examples=64, eval_examples=32, bench_tensors=(1 << 24,) * 4 + (4096,) * 64,
                bench_seeds=32, repeats=3, ray_timeout=240.0)


def fused_add_codes() -> Callable[..., None] | None:
    """``fedtune.seeded.fused.add_codes_`` when the module exists, else None."""
    try:
        return importlib.import_module("fedtune.seeded.fused").add_codes_
    except (ImportError, AttributeError):
        return None


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# ---- (a) bit identity ---------------------------------------------------------------------------
def check_z(plan: Plan) -> Result:
    """z on ``plan.other``, in one batch and chunk by chunk, equals z on the CPU bit for bit."""
    seeds = [int(s) for s in derive_seeds(11, 6)] + [1, (1 << 63) - 1]
    compared = mismatched = 0
    for index in (0, 3, 1000):
        offset = 5 + index  # not a multiple of 4: lanes start mid-hash
        ref = perturbations(seeds, index, plan.z_numel, "cpu", offset=offset)
        whole = perturbations(seeds, index, plan.z_numel, plan.other, offset=offset).cpu()
        parts = torch.cat([
            perturbations(seeds, index, min(plan.z_chunk, plan.z_numel - s), plan.other,
                          offset=offset + s).cpu()
            for s in range(0, plan.z_numel, plan.z_chunk)], dim=1)
        for got in (whole, parts):
            compared += got.numel()
            mismatched += int((got.view(torch.int32) != ref.view(torch.int32)).sum())
    ok = mismatched == 0
    return Result("a/z", "pass" if ok else "fail",
                  f"{compared:,} values, {mismatched} differ (cpu vs {plan.other})",
                  data={"compared": compared, "mismatched": mismatched})


def replay_weights(plan: Plan) -> list[torch.Tensor]:
    """w0 of the replay check: the tiny model's ZO parameters, or random ``replay_shapes``."""
    if not plan.replay_shapes:
        from fedtune.models.loading import build_tiny

        return float32_snapshot(build_tiny())
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(shape, generator=gen) * 0.1 for shape in plan.replay_shapes]


def check_replay(plan: Plan) -> Result:
    """The replay of one A: on ``plan.other`` (dry run: with another chunk size) it gives the
    CPU replay's weights bit for bit."""
    w0 = replay_weights(plan)
    k = plan.replay_k
    rng = np.random.default_rng(0)
    a = (rng.normal(size=k) * (rng.random(k) < 0.5)).astype(np.float32)
    seeds = derive_seeds(0, k)
    lr = 1e-3
    here = [w.clone() for w in w0]
    replay_(here, w0, a, seeds, lr)
    there = [w.to(plan.other, copy=True) for w in w0]
    replay_(there, [w.to(plan.other) for w in w0], a, seeds, lr,
            chunk_size=1_024 if plan.dry_run else None)
    moved = sum(int((h != w).sum()) for h, w in zip(here, w0, strict=True))
    differ = sum(int((h.view(torch.int32) != t.cpu().view(torch.int32)).sum())
                 for h, t in zip(here, there, strict=True))
    n = sum(p.numel() for p in here)
    ok = differ == 0 and moved > 0
    return Result("a/replay", "pass" if ok else "fail",
                  f"{n:,} weights, {np.count_nonzero(a)} seeds: {differ} differ "
                  f"(cpu vs {plan.other}), {moved:,} moved from w0",
                  data={"weights": n, "seeds": int(np.count_nonzero(a)), "mismatched": differ,
                        "moved": moved})


def reference_add_codes_(s: torch.Tensor, seeds: Sequence[int], deltas: torch.Tensor,
                         index: int, start: int) -> None:
    """What ``add_codes_`` computes, from z itself: s += sum_j deltas[j] * zcode(seeds[j])."""
    codes = (perturbations(list(seeds), index, s.numel(), s.device, offset=start)
             * Z_SCALE).round().to(torch.int64)
    s.add_((codes * deltas.to(s.device).unsqueeze(1)).sum(0))


def check_add_codes(plan: Plan) -> Result:
    """``add_codes_`` on the CPU and on ``plan.other`` equals the integer sum built from z."""
    add_codes_ = fused_add_codes()
    if add_codes_ is None:
        return Result("a/add_codes_", "skip", "fedtune.seeded.fused.add_codes_ is not present")
    seeds = [int(s) for s in derive_seeds(5, 16)]
    gen = torch.Generator().manual_seed(0)
    deltas = torch.randint(-(1 << 20), 1 << 20, (len(seeds),), generator=gen, dtype=torch.int64)
    s0 = torch.randint(-(1 << 40), 1 << 40, (plan.codes_numel,), generator=gen,
                       dtype=torch.int64)
    index, start = 2, 12_344  # add_codes_ wants start % 4 == 0
    want = s0.clone()
    reference_add_codes_(want, seeds, deltas, index, start)
    differ = {}
    for device in dict.fromkeys(("cpu", plan.other)):
        got = s0.to(device, copy=True)  # s0.to("cpu") would be s0 itself, summed in place
        add_codes_(got, seeds, deltas, index, start)
        differ[device] = int((got.cpu() != want).sum())
    ok = not any(differ.values())
    backends = fused_backends(plan)
    return Result("a/add_codes_", "pass" if ok else "fail",
                  f"{plan.codes_numel:,} sums of {len(seeds)} seeds, differing from z's codes: "
                  + ", ".join(f"{d} {n}" for d, n in differ.items())
                  + f" (backends {backends})", data={"mismatched": differ, "backends": backends})


def fused_backends(plan: Plan) -> dict[str, str]:
    """The backend ``add_codes_`` picks on each device ({} without ``available_backend``)."""
    try:
        pick = importlib.import_module("fedtune.seeded.fused").available_backend
    except (ImportError, AttributeError):
        return {}
    return {device: pick(device) for device in dict.fromkeys(("cpu", plan.other))}


def check_version(plan: Plan) -> Result:
    """An exact version (w0 - c S) on ``plan.other``, reached incrementally (A1, then A2), has
    the CPU's bits, and those of a fresh load of A2 (dry run: another chunk size)."""
    from fedtune.seeded.versions import VersionStore

    w0 = replay_weights(plan)
    k = plan.replay_k
    rng = np.random.default_rng(2)
    a1 = rng.normal(size=k) * (rng.random(k) < 0.5)
    a2 = a1.copy()
    a2[: k // 4] += rng.normal(size=k // 4)
    seeds = derive_seeds(3, k)
    lr = 1e-3
    routes = (("cpu", None), (plan.other, plan.z_chunk if plan.dry_run else None))
    got: dict[str, list[torch.Tensor]] = {}
    with tempfile.TemporaryDirectory(prefix="fedtune-gpu-version-") as tmp:
        for n, (device, chunk) in enumerate(routes):
            extra = {} if chunk is None else {"chunk": chunk}
            params = [w.to(device, copy=True) for w in w0]
            store = VersionStore(params, seeds, lr, Path(tmp) / f"inc{n}", **extra)
            store.load(a1)
            store.load(a2)
            fresh = [w.to(device, copy=True) for w in w0]
            VersionStore(fresh, seeds, lr, Path(tmp) / f"full{n}", **extra).load(a2)
            got[f"{n}/inc"] = [p.cpu() for p in params]
            got[f"{n}/full"] = [p.cpu() for p in fresh]

    def differ(x: list[torch.Tensor], y: list[torch.Tensor]) -> int:
        return sum(int((p.view(torch.int32) != q.view(torch.int32)).sum())
                   for p, q in zip(x, y, strict=True))

    counts = {"cpu_vs_other": differ(got["0/inc"], got["1/inc"]),
              "incremental_vs_full": differ(got["1/inc"], got["1/full"])}
    moved = sum(int((p != w).sum()) for p, w in zip(got["1/inc"], w0, strict=True))
    n = sum(w.numel() for w in w0)
    ok = not any(counts.values()) and moved > 0
    return Result("a/version", "pass" if ok else "fail",
                  f"{n:,} weights, {k} seeds: {counts['cpu_vs_other']} differ (cpu vs "
                  f"{plan.other}), {counts['incremental_vs_full']} differ (A1 then A2 vs A2), "
                  f"{moved:,} moved", data={"weights": n, "mismatched": counts, "moved": moved})
