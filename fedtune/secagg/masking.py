"""Masked arithmetic in the ring Z_{2^32}: the PRG that expands seeds into masks, and the
quantisation that maps float vectors into the ring so that masks cancel exactly in the sum.
"""

from __future__ import annotations

import math

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from fedtune.secagg.crypto import SecAggError

RING_BITS = 32
_ZERO_NONCE = bytes(16)


def prg(seed: bytes, n: int) -> np.ndarray:
    """``n`` pseudorandom uint32 values: the ChaCha20 keystream of a 32-byte seed, little-endian.

    The nonce is fixed (zero) because every seed is a fresh key used for one stream.
    """
    if not isinstance(seed, bytes) or len(seed) != 32:
        raise SecAggError("a PRG seed must be 32 bytes.")
    if not isinstance(n, int | np.integer) or n < 0:
        raise SecAggError(f"a PRG length must be a non-negative integer, not {n!r}.")
    n = int(n)
    out = np.empty(n, dtype="<u4")
    if n:
        encryptor = Cipher(algorithms.ChaCha20(seed, _ZERO_NONCE), mode=None).encryptor()
        encryptor.update_into(bytes(4 * n), memoryview(out.view(np.uint8)))
    return out.astype(np.uint32, copy=False)  # a no-op on little-endian hosts


def max_clients(bits: int) -> int:
    """How many ``bits``-bit quantised values can be summed in uint32 without wrapping."""
    _check_bits(bits)
    return (2**RING_BITS - 1) // (2**bits - 1)


def _check_bits(bits: int) -> None:
    if not isinstance(bits, int) or not 1 <= bits <= RING_BITS:
        raise SecAggError(f"quantisation bits={bits!r} must be an integer in 1..{RING_BITS}.")


def _check_range(clip_range: float) -> None:
    if not (isinstance(clip_range, int | float) and math.isfinite(clip_range) and clip_range > 0):
        raise SecAggError(f"clip range {clip_range!r} must be a positive finite number.")


def quantize(vec: np.ndarray, clip_range: float, bits: int, gen: np.random.Generator) -> np.ndarray:
    """Clip to [-R, R], map affinely onto [0, 2^bits - 1] and round stochastically (unbiased)."""
    _check_bits(bits)
    _check_range(clip_range)
    x = np.asarray(vec, dtype=np.float64)
    if np.isnan(x).any():
        raise SecAggError("cannot quantise a vector that contains NaN.")
    levels = float(2**bits - 1)
    scaled = (np.clip(x, -clip_range, clip_range) + clip_range) * (levels / (2 * clip_range))
    np.clip(scaled, 0.0, levels, out=scaled)  # float error must not push past the top level
    low = np.floor(scaled)
    up = gen.random(scaled.shape) < (scaled - low)  # P(round up) = fractional part: unbiased
    return (low + up).astype(np.uint32)


def dequantize(total: np.ndarray, count: int, clip_range: float, bits: int) -> np.ndarray:
    """The float sum behind ``total``, the ring sum of ``count`` quantised vectors."""
    _check_range(clip_range)
    if not isinstance(count, int | np.integer) or count < 0:
        raise SecAggError(f"count {count!r} must be a non-negative integer.")
    if count > max_clients(bits):
        raise SecAggError(
            f"{count} clients at {bits} bits overflow uint32 (at most {max_clients(bits)})."
        )
    step = 2 * clip_range / (2**bits - 1)
    return _ring(total, "total").astype(np.float64) * step - count * clip_range


def _ring(a: np.ndarray, name: str) -> np.ndarray:
    if not isinstance(a, np.ndarray) or a.dtype != np.uint32:
        raise SecAggError(f"{name} must be a uint32 numpy array, not {getattr(a, 'dtype', a)!r}.")
    return a


def add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a + b mod 2^32 (both uint32 arrays of one shape; numpy wraps, nothing becomes float)."""
    a, b = _ring(a, "a"), _ring(b, "b")
    if a.shape != b.shape:
        raise SecAggError(f"cannot add ring vectors of shapes {a.shape} and {b.shape}.")
    return np.add(a, b, dtype=np.uint32)


def sub(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a - b mod 2^32 (both uint32 arrays of one shape)."""
    a, b = _ring(a, "a"), _ring(b, "b")
    if a.shape != b.shape:
        raise SecAggError(f"cannot subtract ring vectors of shapes {a.shape} and {b.shape}.")
    return np.subtract(a, b, dtype=np.uint32)
