"""The fixed table z is read from: 65,536 standard-normal quantiles, as exact integer codes.

A 16-bit lane of a hash (:mod:`fedtune.seeded.rng`) indexes it. Entry ``i`` is the quantile of
(i + 0.5) / 65536 rounded to a multiple of 2**-12, so z = code / 4096 with an integer code: the
float table is exact in float32, and model versions can be exact integer sums
(:mod:`fedtune.seeded.versions`).
"""

from __future__ import annotations

import math
import statistics

import torch

__all__ = ["NORMAL_TABLE", "ZCODE_TABLE", "Z_FRAC_BITS", "normal_table"]

Z_FRAC_BITS = 12
"""z values are multiples of 2**-12: z = code / 4096 with an integer code (``ZCODE_TABLE``), so
model versions can be held as exact integer sums (:mod:`fedtune.seeded.versions`)."""


def _build_codes() -> torch.Tensor:
    """65,536 integer codes of standard-normal quantiles at (i + 0.5) / 65536, exactly symmetric.

    Computed in float64 with the standard library, scaled to unit variance (the midpoint table's
    tails are truncated at about 4.3 sigma) and rounded once to a multiple of 2**-12 (|error| <=
    1.2e-4, far below the spacing that matters to a random direction); a test pins the checksum.
    """
    half = [statistics.NormalDist().inv_cdf((i + 0.5) / 65536) for i in range(32768)]
    std = math.sqrt(math.fsum(v * v for v in half) / 32768)
    lower = [round(v / std * (1 << Z_FRAC_BITS)) for v in half]
    return torch.tensor(lower + [-v for v in reversed(lower)], dtype=torch.int64)


ZCODE_TABLE: torch.Tensor = _build_codes()
"""int64 codes: entry ``i`` is 4096 x the standard-normal quantile of (i + 0.5) / 65536."""

NORMAL_TABLE: torch.Tensor = ZCODE_TABLE.to(torch.float32) / (1 << Z_FRAC_BITS)
"""The lookup table on CPU (float32, exact): ``ZCODE_TABLE / 4096``."""

_TABLES: dict[torch.device, torch.Tensor] = {torch.device("cpu"): NORMAL_TABLE}


def normal_table(device: torch.device | str | None = None) -> torch.Tensor:
    """:data:`NORMAL_TABLE` on ``device`` (copied once per device and cached)."""
    dev = torch.device(device if device is not None else "cpu")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    table = _TABLES.get(dev)
    if table is None:
        table = _TABLES[dev] = NORMAL_TABLE.to(dev)
    return table
