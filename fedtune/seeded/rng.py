"""Seeded perturbations z(seed) that are bit-identical on every device and in every process.

FedKSeed (Qin et al., ICML 2024) makes every party regenerate the same direction z(seed) from a
shared seed, so z must not depend on the device, the dtype of the weights or the process.
``torch.manual_seed`` + ``torch.randn`` fails this (CPU and CUDA streams differ), so z is built
from integer operations only:

* parameter ``index`` of the model (see :func:`zo_parameters`) gets its own stream, keyed by
  ``(seed, index)`` with a key and an odd increment ("gamma") derived in exact Python integers;
* hash number ``j`` of that stream is the SplitMix64 finaliser of ``key + (j + 1) * gamma``
  (mod 2**64), computed with wrapping int64 tensor ops; logical shifts are arithmetic shifts
  followed by a mask, so the result is the same as with unsigned 64-bit arithmetic;
* each 64-bit hash gives four 16-bit lanes (lane ``l`` = bits ``16l .. 16l+15``), and element
  ``e`` of the flattened parameter is lane ``e % 4`` of hash ``e // 4``;
* a lane indexes :data:`NORMAL_TABLE`, 65,536 standard-normal quantiles rounded to multiples of
  2**-12 (:data:`ZCODE_TABLE` holds them as integer codes, for exact integer model versions).

Integer multiply, add, xor, shift and a table gather are exact on CPU and CUDA, so the float32
z is bit-identical everywhere; it is cast to the weights' dtype only when it is applied.
Generation runs in chunks (:func:`default_chunk_size`), so no temporary grows with the size of a
parameter.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from fedtune.seeded.params import zo_parameters
from fedtune.seeded.table import NORMAL_TABLE, Z_FRAC_BITS, ZCODE_TABLE, normal_table

__all__ = [
    "CHUNK_SIZE",
    "CUDA_CHUNK_SIZE",
    "NORMAL_TABLE",
    "ZCODE_TABLE",
    "Z_FRAC_BITS",
    "Workspace",
    "add_perturbation_",
    "check_chunk_size",
    "default_chunk_size",
    "normal_table",
    "perturbation",
    "perturbations",
    "stream_key",
]

CHUNK_SIZE = 1 << 18
"""Elements generated per chunk on a CPU: the reused buffers (about 16 bytes per element) stay in
cache; measured about 1.3x faster per element than 1M-element chunks on a 2-core machine."""

CUDA_CHUNK_SIZE = 1 << 24
"""Elements per chunk on a GPU: larger chunks amortise the ~15 kernel launches per chunk; the
buffers then take up to ~300 MiB (only as much as the largest parameter needs)."""


def default_chunk_size(device: torch.device) -> int:
    """:data:`CHUNK_SIZE` on a CPU, :data:`CUDA_CHUNK_SIZE` elsewhere. Chunking never changes z."""
    return CHUNK_SIZE if device.type == "cpu" else CUDA_CHUNK_SIZE


def check_chunk_size(chunk_size: int | None) -> None:
    """Raise ValueError unless ``chunk_size`` is None or a positive multiple of 4."""
    if chunk_size is not None and (chunk_size <= 0 or chunk_size % 4):
        raise ValueError(f"chunk_size must be a positive multiple of 4, got {chunk_size}")


_M64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB
_INDEX_ODD = 0xD1B54A32D192ED03  # odd multiplier that spreads parameter indices over 64 bits


def _mix64(x: int) -> int:
    """SplitMix64 finaliser (Stafford's variant 13) on an unsigned 64-bit Python int."""
    x &= _M64
    x ^= x >> 30
    x = (x * _MIX1) & _M64
    x ^= x >> 27
    x = (x * _MIX2) & _M64
    return x ^ (x >> 31)


def _signed(x: int) -> int:
    """Reinterpret an unsigned 64-bit value as int64 (what a torch int64 tensor holds)."""
    x &= _M64
    return x - (1 << 64) if x >> 63 else x


def stream_key(seed: int, index: int) -> tuple[int, int]:
    """The (key, gamma) of parameter ``index``'s stream for ``seed``, as unsigned 64-bit ints.

    Each stream has its own odd increment, as in SplitMix64's ``split``: streams with equal
    increments would be shifted copies of one Weyl sequence and could overlap over long ranges.
    """
    if index < 0:
        raise ValueError(f"parameter index must be >= 0, got {index}")
    key = _mix64(_mix64((seed & _M64) + _GOLDEN) ^ ((index + 1) * _INDEX_ODD))
    gamma = _mix64(key + _GOLDEN) | 1
    if (gamma ^ (gamma >> 1)).bit_count() < 24:  # SplitMix64's guard against weak increments
        gamma ^= 0xAAAAAAAAAAAAAAAA
    return key, gamma


def _mix_(x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
    """SplitMix64 finaliser, in place on int64 holding unsigned bits (mask = logical shift).
    ``t`` is scratch space of x's shape."""
    t = torch.empty_like(x) if t is None else t
    torch.bitwise_right_shift(x, 30, out=t).bitwise_and_((1 << 34) - 1)
    x.bitwise_xor_(t).mul_(_signed(_MIX1))  # int64 multiply wraps mod 2**64
    torch.bitwise_right_shift(x, 27, out=t).bitwise_and_((1 << 37) - 1)
    x.bitwise_xor_(t).mul_(_signed(_MIX2))
    torch.bitwise_right_shift(x, 31, out=t).bitwise_and_((1 << 33) - 1)
    return x.bitwise_xor_(t)


def _hashes(
    streams: Sequence[tuple[int, int]], first: int, count: int, device: torch.device
) -> torch.Tensor:
    """Hashes ``first .. first + count - 1`` of each (key, gamma) stream: int64 of shape
    (streams, count) holding the unsigned 64-bit bits."""
    j = torch.arange(first + 1, first + 1 + count, dtype=torch.int64, device=device)
    if len(streams) == 1:  # Python-int scalars: fewer kernels for the common case
        key, gamma = streams[0]
        return _mix_(j.mul_(_signed(gamma)).add_(_signed(key)).unsqueeze(0))
    keys = torch.tensor([_signed(k) for k, _ in streams], dtype=torch.int64, device=device)
    gammas = torch.tensor([_signed(g) for _, g in streams], dtype=torch.int64, device=device)
    return _mix_((j * gammas.unsqueeze(1)).add_(keys.unsqueeze(1)))


def _segment_hashes(
    seed: int, indices: Sequence[int], counts: Sequence[int], device: torch.device
) -> torch.Tensor:
    """Hashes ``0 .. counts[i] - 1`` of parameter ``indices[i]``'s stream for every i, concatenated:
    one batched generation for many small parameters (same values as one by one)."""
    streams = [stream_key(seed, i) for i in indices]
    keys = torch.tensor([_signed(k) for k, _ in streams], dtype=torch.int64, device=device)
    gammas = torch.tensor([_signed(g) for _, g in streams], dtype=torch.int64, device=device)
    starts = [0]
    for c in counts[:-1]:
        starts.append(starts[-1] + c)
    total = starts[-1] + counts[-1]
    reps = torch.tensor(counts, dtype=torch.int64, device=device)
    firsts = torch.tensor(starts, dtype=torch.int64, device=device)

    def spread(v: torch.Tensor) -> torch.Tensor:
        return torch.repeat_interleave(v, reps, output_size=total)

    j = torch.arange(1, total + 1, dtype=torch.int64, device=device).sub_(spread(firsts))
    return _mix_(j.mul_(spread(gammas)).add_(spread(keys)))


def _values(h: torch.Tensor, table: torch.Tensor | None = None) -> torch.Tensor:
    """``table`` (default: the normal table) at the lanes of hashes ``h``: (..., 4 * count)."""
    lanes = _lanes(h)
    table = normal_table(h.device) if table is None else table
    return table.index_select(0, lanes.reshape(-1)).view(lanes.shape)


class Workspace:
    """Buffers reused by every chunk of a pass over the weights.

    On a CPU, allocating fresh multi-MiB temporaries per chunk costs more than the arithmetic, and
    small chunks keep the buffers in cache. Buffers grow to the largest request (at most
    ``chunk`` elements), so a small model never pays for a large chunk. :meth:`draw` and
    :meth:`buffer` return views that stay valid until the next call.
    """

    def __init__(self, device: torch.device, chunk: int) -> None:
        self.device = device
        self.chunk = chunk
        self._buffers: dict[tuple[str, torch.dtype], torch.Tensor] = {}

    def _counters(self, count: int) -> torch.Tensor:
        """1, 2, ..., count as int64 (cached)."""
        c = self._buffers.get(("counters", torch.int64))
        if c is None or c.numel() < count:
            c = torch.arange(1, count + 1, dtype=torch.int64, device=self.device)
            self._buffers["counters", torch.int64] = c
        return c[:count]

    def buffer(self, name: str, dtype: torch.dtype, n: int) -> torch.Tensor:
        """A reusable 1-D buffer of ``n <= chunk`` elements."""
        buf = self._buffers.get((name, dtype))
        if buf is None or buf.numel() < n:
            buf = self._buffers[name, dtype] = torch.empty(n, dtype=dtype, device=self.device)
        return buf[:n]

    def draw(self, seed: int, index: int, start: int, n: int, table: torch.Tensor) -> torch.Tensor:
        """``table[lane]`` for elements ``start .. start + n - 1`` of parameter ``index``'s
        stream (``start % 4 == 0``, ``n <= chunk``). With the normal table this is z; with
        ``alpha * table`` it is exactly ``alpha * z`` rounded, one multiply per table entry."""
        key, gamma = stream_key(seed, index)
        count = (n + 3) // 4
        x = self.buffer("hash", torch.int64, count)
        # Hash j is mixed from key + (j + 1) * gamma: counters 1.. come from a cached arange and
        # the chunk's first hash number is folded into the key (exact, mod 2**64).
        torch.mul(self._counters(count), _signed(gamma), out=x)
        x.add_(_signed(key + (start // 4) * gamma))
        _mix_(x, self.buffer("scratch", torch.int64, count))
        lanes = self.buffer("lanes", torch.int32, 4 * count)
        if sys.byteorder == "little" and self.device.type == "cpu":
            lanes.copy_(x.view(torch.uint16))  # one pass; the CPU converts uint16 natively
        elif sys.byteorder == "little":
            lanes.copy_(x.view(torch.int16)).bitwise_and_(0xFFFF)
        else:
            lanes.copy_(_lanes_by_shifts(x))
        out = self.buffer("draw", table.dtype, 4 * count)
        torch.index_select(table, 0, lanes, out=out)
        return out[:n]


def _lanes(h: torch.Tensor) -> torch.Tensor:
    """16-bit lanes of int64 hashes (lane 0 = lowest bits) along the last dimension, as int32
    in [0, 65536); shape (..., 4 * count)."""
    if sys.byteorder == "little":  # a free reinterpretation; CUDA devices are little-endian too
        idx = h.view(torch.int16).to(torch.int32)
        return idx.bitwise_and_(0xFFFF)
    return _lanes_by_shifts(h)


def _lanes_by_shifts(h: torch.Tensor) -> torch.Tensor:
    """Endianness-independent twin of :func:`_lanes` (used on big-endian hosts and in tests)."""
    out = torch.empty(*h.shape, 4, dtype=torch.int64, device=h.device)
    for lane in range(4):
        torch.bitwise_right_shift(h, 16 * lane, out=out[..., lane])
    return out.bitwise_and_(0xFFFF).flatten(-2).to(torch.int32)


def perturbations(
    seeds: Sequence[int],
    index: int,
    numel: int,
    device: torch.device | str | None = None,
    *,
    offset: int = 0,
) -> torch.Tensor:
    """Rows of :func:`perturbation` for several seeds at once, shape (len(seeds), numel).

    One batched generation instead of one per seed: cheaper for small parameters, same values.
    """
    if numel < 0 or offset < 0:
        raise ValueError(f"numel and offset must be >= 0, got numel={numel}, offset={offset}")
    if not seeds:
        raise ValueError("perturbations needs at least one seed")
    dev = torch.device(device if device is not None else "cpu")
    first, skip = divmod(offset, 4)
    count = (skip + numel + 3) // 4
    z = _values(_hashes([stream_key(s, index) for s in seeds], first, count, dev))
    return z[:, skip : skip + numel] if skip or z.shape[1] != numel else z


def perturbation(
    seed: int,
    index: int,
    numel: int,
    device: torch.device | str | None = None,
    *,
    offset: int = 0,
) -> torch.Tensor:
    """Elements ``offset .. offset + numel - 1`` of z(seed) for parameter ``index``, float32 1-D.

    The values depend only on (seed, index, element position); ``device`` only says where they
    are built. Callers bound memory by asking for ranges (see :data:`CHUNK_SIZE`).
    """
    return perturbations([seed], index, numel, device, offset=offset)[0]


def _as_params(params: nn.Module | Iterable[torch.Tensor]) -> Sequence[torch.Tensor]:
    return zo_parameters(params) if isinstance(params, nn.Module) else list(params)


def _add_(p: torch.Tensor, update: torch.Tensor, ws: Workspace | None = None) -> None:
    """``p += update`` on a flat slice: in the update's dtype (float32 or float64), rounding
    low-precision weights once. ``ws`` lends a scratch buffer for the upcast."""
    if p.dtype == update.dtype:
        p.add_(update)
        return
    work = ws.buffer("work", update.dtype, p.numel()) if ws is not None else None
    work = p.to(update.dtype) if work is None else work.copy_(p)
    p.copy_(work.add_(update))


@torch.no_grad()
def add_perturbation_(
    params: nn.Module | Iterable[torch.Tensor],
    seed: int,
    alpha: float,
    *,
    chunk_size: int | None = None,
) -> None:
    """In place, ``p += alpha * z(seed, i)`` for the i-th tensor of ``params``.

    ``params`` is a model (its :func:`zo_parameters`) or that list. ``alpha * z`` is rounded on
    its own (it is read from a table scaled by alpha, never fused into the addition), in float32
    for float32/bf16/fp16 weights and float64 for float64 weights, then added in that precision
    and cast back once; so the result is the same for any chunking and any device. Low-precision
    weights round on every call: a perturbation smaller than half their spacing is lost, which is
    why ZO weights are best kept in float32.

    Large parameters go ``chunk_size`` elements at a time (None: by device, see
    :func:`default_chunk_size`); runs of small ones (biases, norms) share one batched generation,
    which saves ~15 kernel launches per parameter.
    """
    check_chunk_size(chunk_size)
    tables: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}
    spaces: dict[torch.device, Workspace] = {}

    def scaled(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        work = torch.float64 if dtype == torch.float64 else torch.float32
        if (device, work) not in tables:
            tables[device, work] = normal_table(device).to(work) * alpha
        return tables[device, work]

    batch: list[tuple[int, torch.Tensor]] = []  # (index, contiguous small parameter)
    batched = 0  # elements in batch

    def flush() -> None:
        nonlocal batched
        if not batch:
            return
        device = batch[0][1].device
        counts = [(p.numel() + 3) // 4 for _, p in batch]
        h = _segment_hashes(seed, [i for i, _ in batch], counts, device)
        by_dtype: dict[torch.dtype, torch.Tensor] = {}
        pos = 0
        for (_, p), c in zip(batch, counts, strict=True):
            table = scaled(device, p.dtype)
            if table.dtype not in by_dtype:
                by_dtype[table.dtype] = _values(h, table).view(-1)
            _add_(p.view(-1), by_dtype[table.dtype][pos : pos + p.numel()])
            pos += 4 * c
        batch.clear()
        batched = 0

    for index, p in enumerate(_as_params(params)):
        if p.numel() == 0:
            continue
        chunk = chunk_size or default_chunk_size(p.device)
        if p.numel() <= max(4, chunk // 16) and p.is_contiguous():
            if batch and batch[0][1].device != p.device:
                flush()
            batch.append((index, p))
            batched += p.numel()
            if batched >= chunk:
                flush()
            continue
        flush()
        ws = spaces.get(p.device)
        if ws is None or ws.chunk != chunk:
            ws = spaces[p.device] = Workspace(p.device, chunk)
        table = scaled(p.device, p.dtype)
        flat = p.view(-1) if p.is_contiguous() else p.contiguous().view(-1)
        for start in range(0, flat.numel(), chunk):
            part = flat[start : start + chunk]
            _add_(part, ws.draw(seed, index, start, part.numel(), table), ws)
        if not p.is_contiguous():
            p.copy_(flat.view_as(p))
    flush()
