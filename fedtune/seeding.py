"""Every random choice is seeded by (run seed, round, node): never by Flower's node id. On CUDA,
the kernels are made deterministic too (config ``deterministic``)."""

from __future__ import annotations

import hashlib
import os

import numpy as np

CUBLAS_WORKSPACE = ":4096:8"  # what PyTorch asks for to make cuBLAS deterministic (CUDA >= 10.2)


def derive_seed(*parts: int | str) -> int:
    """A stable 63-bit seed from any tuple of ints/strings, the same in every process."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def rng(*parts: int | str) -> np.random.Generator:
    return np.random.default_rng(derive_seed(*parts))


def deterministic_cuda(enabled: bool, device: str = "auto") -> bool:
    """Config ``deterministic`` (default true) for this process, called before its CUDA work.

    On CUDA (``device`` cuda[:N], or auto with a GPU present): ``enabled`` sets
    ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (unless the caller set it) and
    ``torch.use_deterministic_algorithms(True)``, so the same seeds give the same bits run after
    run (an op without a deterministic CUDA kernel then raises instead of drifting); false
    restores PyTorch's default. On CPU nothing is touched, so CPU metrics stay bit for bit
    what they were. Returns whether deterministic CUDA kernels are now on.
    """
    kind = device.split(":")[0]
    if kind not in ("auto", "cuda"):
        return False
    import torch

    if not torch.cuda.is_available():
        return False
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)  # read at first use
    torch.use_deterministic_algorithms(enabled)
    return enabled
