"""Fused integer replay: ``acc[i] += sum_j deltas[j] * ZCODE(seeds[j], index, start + i)``.

Exact model versions hold, per weight, the integer ``S = sum_s A_s * ZCODE(s, e)``; catching up
adds the changed seeds' deltas. All arithmetic is wrapping int64 (mod 2**64), which is
associative, so every backend, chunking, seed order and thread split gives the same bits.

Instead of one pass over the weights per seed, every backend but ``eager`` generates z for all
seeds while a block of weights stays in registers or cache:

* ``native`` (CPU): a small C kernel built once per process with the system C compiler (``$CC``
  or ``cc``; about 0.3 s) and called through ctypes on as many threads as torch uses. With
  AVX-512 it hashes 16 counters per step and gathers the codes; elsewhere it is plain C.
* ``compiled``: the batched formula under ``torch.compile`` (Triton on CUDA, C++ on CPU), with
  dynamic seed and block counts so that it compiles once per process and device.
* ``batched``: the same formula run eagerly on blocks of seeds (for comparison).
* ``eager``: per seed, :class:`~fedtune.seeded.rng.Workspace` with the code table times delta.

``auto`` takes the first of native, compiled, eager that builds and matches eager on a probe
(checked once per process and device; a failure is logged at debug level and skipped).
"""

from __future__ import annotations

import ctypes
import functools
import itertools
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from fedtune.seeded.rng import _MIX1, _MIX2, ZCODE_TABLE, Workspace, _signed, stream_key

__all__ = ["BACKENDS", "add_codes_", "available_backend", "dot_perturbations"]

log = logging.getLogger(__name__)

BACKENDS = ("auto", "native", "compiled", "batched", "eager")
_W = 16  # counters per row of the batched formula: the vector width the compiled loop uses

_C_SOURCE = r"""
#include <stdint.h>
#include <stdlib.h>
#if defined(__AVX512F__) && defined(__AVX512DQ__)
#include <immintrin.h>
#endif
typedef uint64_t u64;
/* For hashes lo..hi-1: acc[4i+l] += sum_s d[s] * T[lane l of mix(key[s] + (i+1)*gamma[s])]. */
void add_codes(u64 *acc, int64_t lo, int64_t hi, int64_t n, const u64 *key, const u64 *gamma,
               const u64 *d, int64_t ns, const int32_t *T) {
  int64_t i = lo;
#if defined(__AVX512F__) && defined(__AVX512DQ__)
#define SET(x) _mm512_set1_epi64((int64_t)(x))
#define MIX(x, sh, m) x = _mm512_xor_si512(x, _mm512_srli_epi64(x, sh)); \
  if (m) x = _mm512_mullo_epi64(x, SET(m));
  /* 16 hashes (64 elements) per step as two vectors of counters; for each seed, d = hi * 2**32
     + lo with int32 lo, hi, so c * d = c * lo + (c * hi << 32) mod 2**64 (one-uop multiplies) */
  __m512i *g = aligned_alloc(64, 64 * (ns + 1)), step = _mm512_set_epi64(8, 7, 6, 5, 4, 3, 2, 1);
  for (int64_t s = 0; g && s < ns; s++) g[s] = _mm512_mullo_epi64(step, SET(gamma[s]));
  for (; g && i + 16 <= hi; i += 16) {
    __m512i a[8], b[8];
    for (int l = 0; l < 8; l++) a[l] = b[l] = _mm512_setzero_si512();
    for (int64_t s = 0; s < ns; s++) {
      __m512i h[2];
      h[0] = _mm512_add_epi64(SET(key[s] + (u64)i * gamma[s]), g[s]);
      h[1] = _mm512_add_epi64(h[0], SET(8 * gamma[s]));
      int64_t lo32 = (int32_t)d[s];
      __m512i dl = SET(lo32), dh = SET((d[s] - (u64)lo32) >> 32);
      for (int u = 0; u < 2; u++) {
        MIX(h[u], 30, 0xBF58476D1CE4E5B9ULL)
        MIX(h[u], 27, 0x94D049BB133111EBULL)
        MIX(h[u], 31, 0)
        for (int l = 0; l < 4; l++) {
          __m512i c = _mm512_and_si512(_mm512_srli_epi64(h[u], 16 * l), SET(0xFFFF));
          c = _mm512_cvtepi32_epi64(_mm512_i64gather_epi32(c, T, 4));
          a[4 * u + l] = _mm512_add_epi64(a[4 * u + l], _mm512_mul_epi32(c, dl));
          b[4 * u + l] = _mm512_add_epi64(b[4 * u + l], _mm512_mul_epi32(c, dh));
        }
      }
    }
    int64_t out[8][8];
    for (int l = 0; l < 8; l++)
      _mm512_storeu_si512(out[l], _mm512_add_epi64(a[l], _mm512_slli_epi64(b[l], 32)));
    for (int k = 0; k < 16; k++)
      for (int l = 0; l < 4 && 4 * (i + k) + l < n; l++)
        acc[4 * (i + k) + l] += out[4 * (k / 8) + l][k % 8];
  }
  free(g);
#endif
  for (; i < hi; i++) { /* portable C: wrapping u64 arithmetic, same values */
    u64 a[4] = {0, 0, 0, 0};
    for (int64_t s = 0; s < ns; s++) {
      u64 h = key[s] + (u64)(i + 1) * gamma[s];
      h = (h ^ (h >> 30)) * 0xBF58476D1CE4E5B9ULL;
      h = (h ^ (h >> 27)) * 0x94D049BB133111EBULL;
      h ^= h >> 31;
      for (int l = 0; l < 4; l++) a[l] += (u64)(int64_t)T[(h >> (16 * l)) & 0xFFFF] * d[s];
    }
    for (int l = 0; l < 4 && 4 * i + l < n; l++) acc[4 * i + l] += a[l];
  }
}
/* Ferret's projection: out[s] = sum_e T[code of element e of seed s] * x[e], seeds s0..s1-1,
   each seed's sum in one fixed order (so the result does not depend on the thread split). */
void dot_codes(double *out, int64_t s0, int64_t s1, int64_t n, const u64 *key, const u64 *gamma,
               const double *x, const int32_t *T) {
  for (int64_t s = s0; s < s1; s++) {
    double a[4] = {0, 0, 0, 0};
    for (int64_t i = 0; 4 * i < n; i++) {
      u64 h = key[s] + (u64)(i + 1) * gamma[s];
      h = (h ^ (h >> 30)) * 0xBF58476D1CE4E5B9ULL;
      h = (h ^ (h >> 27)) * 0x94D049BB133111EBULL;
      h ^= h >> 31;
      for (int l = 0; l < 4 && 4 * i + l < n; l++)
        a[l] += (double)T[(h >> (16 * l)) & 0xFFFF] * x[4 * i + l];
    }
    out[s] = (a[0] + a[1]) + (a[2] + a[3]);
  }
}
"""

_status: dict[tuple[str, str], bool] = {}  # (backend, device type) -> passed its probe


@functools.cache
def _table(device: torch.device, dtype: torch.dtype = torch.int64) -> torch.Tensor:
    return ZCODE_TABLE.to(device=device, dtype=dtype)


@functools.cache
def _native_lib(archs: tuple[str, ...] = ("-march=native", "")) -> ctypes.CDLL:
    """The C kernel, built on first use in a private temporary folder (removed once loaded)
    with the first of ``archs`` the compiler accepts ("": portable code)."""
    tmp = Path(tempfile.mkdtemp(prefix="fedtune_fused_"))
    try:
        src, out, err = tmp / "fused.c", tmp / "fused.so", ""
        src.write_text(_C_SOURCE)
        for arch in archs:
            cmd = [os.environ.get("CC", "cc"), "-O3", *arch.split(), "-shared", "-fPIC", str(src)]
            run = subprocess.run([*cmd, "-o", str(out)], capture_output=True, text=True)
            if run.returncode == 0:
                break
            err = run.stderr
        else:
            raise RuntimeError(f"C compiler failed: {err.strip()[:500]}")
        lib = ctypes.CDLL(str(out))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    lib.add_codes.restype = None
    lib.add_codes.argtypes = [ctypes.c_void_p] + [ctypes.c_int64] * 3 + [ctypes.c_void_p] * 3
    lib.add_codes.argtypes += [ctypes.c_int64, ctypes.c_void_p]
    lib.dot_codes.restype = None
    lib.dot_codes.argtypes = [ctypes.c_void_p] + [ctypes.c_int64] * 3 + [ctypes.c_void_p] * 4
    return lib


@functools.cache
def _pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(workers, thread_name_prefix="fedtune_fused")


def _native(acc: torch.Tensor, keys: torch.Tensor, gammas: torch.Tensor, d: torch.Tensor) -> None:
    """The C kernel, on up to ``torch.get_num_threads()`` threads (ctypes releases the GIL)."""
    fn = _native_lib().add_codes
    n, hashes = acc.numel(), (acc.numel() + 3) // 4
    args = [t.data_ptr() for t in (keys, gammas, d)]
    args += [d.numel(), _table(acc.device, torch.int32).data_ptr()]
    parts = max(1, min(torch.get_num_threads(), hashes * d.numel() // (1 << 18)))
    if parts == 1:
        fn(acc.data_ptr(), 0, hashes, n, *args)
        return
    cuts = [hashes * k // parts // 8 * 8 for k in range(parts)] + [hashes]
    list(_pool(parts).map(lambda c: fn(acc.data_ptr(), *c, n, *args), itertools.pairwise(cuts)))


def _mix(x: torch.Tensor) -> torch.Tensor:
    """SplitMix64 finaliser on int64 holding unsigned bits (arithmetic shift + mask)."""
    x = (x ^ ((x >> 30) & ((1 << 34) - 1))) * _signed(_MIX1)
    x = (x ^ ((x >> 27) & ((1 << 37) - 1))) * _signed(_MIX2)
    return x ^ ((x >> 31) & ((1 << 33) - 1))


def _terms(
    keys: torch.Tensor, gammas: torch.Tensor, d: torch.Tensor, j: torch.Tensor, table: torch.Tensor
) -> torch.Tensor:
    """Seeds' rows [S, W] and counters [B, W] -> sums over S, [B, W, 4]: one loop nest when
    compiled, vectorised along W with the seed loop inside (nothing of size S x B is stored)."""
    h = _mix(keys[:, None, :] + j[None, :, :] * gammas[:, None, :])
    lanes = [(table[(h >> (16 * lane)) & 0xFFFF] * d[:, None, :]).sum(0) for lane in range(4)]
    return torch.stack(lanes, -1)


@functools.cache
def _compiled() -> Callable[..., torch.Tensor]:
    """:func:`_terms` compiled once; sizes are marked dynamic per call (no recompiles)."""
    opts = {"assert_indirect_indexing": False}  # the lanes are masked to the table's size
    return torch.compile(_terms, dynamic=False, options=opts)


def _batched(
    acc: torch.Tensor, keys: torch.Tensor, gammas: torch.Tensor, d: torch.Tensor, compiled: bool
) -> None:
    """:func:`_terms` over chunks of ``acc`` and blocks of seeds (all seeds at once if compiled)."""
    dev, n = acc.device, acc.numel()
    chunk = (1 << 22 if dev.type == "cuda" else 1 << 16) if compiled else 1 << 14
    rows = max(2, min(-(-n // (4 * _W)), chunk // (4 * _W)))
    block = max(2, d.numel()) if compiled else 16
    j = torch.arange(1, rows * _W + 1, dtype=torch.int64, device=dev).view(rows, _W)
    fn = _compiled() if compiled else _terms
    for s0 in range(0, d.numel(), block):
        part = [t[s0 : s0 + block] for t in (keys, gammas, d)]
        if part[0].numel() < 2:  # sizes 0 and 1 would specialise the compiled graph: pad
            part = [torch.cat([t, torch.zeros_like(t)]) for t in part]  # delta 0 adds 0
        k, g, dd = (t[:, None].expand(-1, _W).contiguous() for t in part)
        for e0 in range(0, n, 4 * _W * rows):
            m = min(n - e0, 4 * _W * rows)
            args = [k + g * (e0 // 4), g, dd, j[: max(2, -(-m // (4 * _W)))]]  # wrapping
            if compiled:
                for t in args:
                    torch._dynamo.mark_dynamic(t, 0)
            acc[e0 : e0 + m] += fn(*args, _table(dev)).view(-1)[:m]


def _eager(acc: torch.Tensor, seeds: list[int], deltas: list[int], index: int, start: int) -> None:
    """One pass per seed through :class:`Workspace` buffers, gathering from delta * codes."""
    ws = Workspace(acc.device, 1 << 18 if acc.device.type == "cpu" else 1 << 24)
    for seed, delta in zip(seeds, deltas, strict=True):
        table = _table(acc.device) * delta  # wrapping int64, exact mod 2**64
        for e0 in range(0, acc.numel(), ws.chunk):
            part = acc[e0 : e0 + ws.chunk]
            part += ws.draw(seed, index, start + e0, part.numel(), table)


_stream = functools.lru_cache(maxsize=1 << 12)(stream_key)  # callers often go chunk by chunk


def _run(
    name: str, acc: torch.Tensor, seeds: list[int], deltas: np.ndarray, index: int, start: int
) -> None:
    if name == "eager":
        _eager(acc, seeds, deltas.tolist(), index, start)
        return
    if name == "native" and acc.device.type != "cpu":
        raise ValueError("the native backend runs on CPU tensors only")
    streams = np.array([_stream(s, index) for s in seeds], dtype=np.uint64).reshape(-1, 2)
    first = streams[:, 0] + streams[:, 1] * np.uint64(start // 4)  # counters begin at start
    keys, gammas, d = (
        torch.from_numpy(np.ascontiguousarray(c).view(np.int64)).to(acc.device)
        for c in (first, streams[:, 1], deltas)
    )
    if name == "native":
        _native(acc, keys, gammas, d)
    else:
        _batched(acc, keys, gammas, d, compiled=name == "compiled")


def _ready(name: str, device: torch.device) -> bool:
    """Whether ``name`` works on ``device``: built and checked against eager once per process."""
    key = (name, device.type)
    if key not in _status:
        try:
            got = torch.zeros(37, dtype=torch.int64, device=device)
            want = got.clone()
            probe = ([3, 2**62 + 1], np.array([-(2**40) - 7, 2**63 - 1]), 5, 8)
            _run(name, got, *probe)
            _run("eager", want, *probe)
            if not torch.equal(got, want):
                raise RuntimeError("probe result differs from the eager backend")
            _status[key] = True
        except Exception as err:  # noqa: BLE001 - no compiler, no Triton, ...: fall back
            log.debug("fused backend %s unavailable on %s: %r", name, device.type, err)
            _status[key] = False
    return _status[key]


def available_backend(device: torch.device | str = "cpu") -> str:
    """The backend ``auto`` uses on ``device`` (probing candidates on first use)."""
    dev = torch.device(device)
    order = ("native", "compiled") if dev.type == "cpu" else ("compiled",)
    return next((b for b in order if _ready(b, dev)), "eager")


@torch.no_grad()
def add_codes_(
    acc: torch.Tensor,
    seeds: Sequence[int],
    deltas: Sequence[int] | torch.Tensor,
    index: int,
    start: int = 0,
    *,
    backend: str = "auto",
) -> None:
    """``acc[i] += sum_j deltas[j] * ZCODE(seeds[j], index, start + i)`` for every i, in place.

    ``acc``: 1-D int64 on any device; ``start % 4 == 0``; deltas are int64 (the sum wraps mod
    2**64), seeds ints in [1, 2**63). Bit-identical for every backend (:data:`BACKENDS`).
    """
    if acc.dtype != torch.int64 or acc.dim() != 1:
        raise ValueError(f"acc must be a 1-D int64 tensor, got {acc.dtype} {tuple(acc.shape)}")
    if start < 0 or start % 4:
        raise ValueError(f"start must be a non-negative multiple of 4, got {start}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if len(seeds) == 0 and len(deltas) == 0:
        return
    d = np.asarray(deltas.cpu() if isinstance(deltas, torch.Tensor) else deltas)
    if d.shape != (len(seeds),) or d.dtype.kind not in "iu":
        raise ValueError(f"need {len(seeds)} integer deltas, got {d.dtype} {d.shape}")
    keep = np.flatnonzero(d)
    if not keep.size or acc.numel() == 0:
        return
    name = available_backend(acc.device) if backend == "auto" else backend
    work = acc if acc.is_contiguous() else acc.contiguous()
    kept = np.asarray(seeds, dtype=np.uint64)[keep].tolist()
    _run(name, work, kept, d[keep].astype(np.int64), index, start)
    if work is not acc:
        acc.copy_(work)


@torch.no_grad()
def dot_perturbations(x: torch.Tensor, seeds: Sequence[int], index: int, start: int = 0
                      ) -> np.ndarray:
    """``<z(seed, index)[start : start + n], x>`` for every seed, float64, for a 1-D float64
    ``x`` of n elements (``start % 4 == 0``): Ferret's projection, one pass per seed with no
    z stored. CPU: the native kernel on up to ``torch.get_num_threads()`` threads (each seed's
    sum in one fixed order); elsewhere, or without a C compiler, batched generation."""
    if x.dtype != torch.float64 or x.dim() != 1:
        raise ValueError(f"x must be a 1-D float64 tensor, got {x.dtype} {tuple(x.shape)}")
    if start < 0 or start % 4:
        raise ValueError(f"start must be a non-negative multiple of 4, got {start}")
    if not len(seeds) or not x.numel():
        return np.zeros(len(seeds))
    if x.device.type == "cpu" and _ready("native", x.device):
        return _native_dots(x.contiguous(), seeds, index, start)
    from fedtune.seeded.rng import perturbations

    out = np.zeros(len(seeds))
    rows = max(1, (1 << 22) // x.numel())
    for s0 in range(0, len(seeds), rows):
        z = perturbations(list(seeds[s0:s0 + rows]), index, x.numel(), x.device, offset=start)
        out[s0:s0 + rows] = (z.double() @ x).cpu().numpy()
    return out


def _native_dots(x: torch.Tensor, seeds: Sequence[int], index: int, start: int) -> np.ndarray:
    fn = _native_lib().dot_codes
    streams = np.array([_stream(int(s), index) for s in seeds], dtype=np.uint64).reshape(-1, 2)
    keys = np.ascontiguousarray(streams[:, 0] + streams[:, 1] * np.uint64(start // 4))
    gammas = np.ascontiguousarray(streams[:, 1])
    out = np.zeros(len(seeds))
    args = [x.numel(), keys.ctypes.data, gammas.ctypes.data, x.data_ptr(),
            _table(x.device, torch.int32).data_ptr()]
    parts = max(1, min(torch.get_num_threads(), len(seeds), x.numel() * len(seeds) >> 18))
    cuts = [len(seeds) * k // parts for k in range(parts + 1)]
    list(_pool(parts).map(lambda c: fn(out.ctypes.data, *c, *args), itertools.pairwise(cuts)))
    return out / 4096.0  # z = code / 2**12, exactly
