"""Secret randomness for the privacy mechanisms: DP noise, the DP client sample, SecAgg's
neighbour graph and stochastic rounding.

Everything else in fedtune is seeded from the run config (``seed``), which every ClientApp
receives and ``config.json`` holds; noise drawn from it can be regenerated and subtracted by
anyone, so a mechanism's randomness never comes from there. :func:`privacy_rng` draws fresh
operating-system entropy on every call, unless the server's environment sets
``FEDTUNE_DP_SECRET``: then HMAC-SHA256(secret, purpose|parts) seeds it, the run is reproducible
(and resumes bit for bit), and differential privacy holds only against those who do not know
the secret. The secret is read from the environment only: never from the run config, never
written to a run's files.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os

import numpy as np

SECRET_ENV = "FEDTUNE_DP_SECRET"
WARNING = (f"{SECRET_ENV} is set: the privacy mechanisms' randomness (DP noise and sample, "
           "SecAgg's graph and rounding) is derived from it, so this run is reproducible and "
           "its differential privacy holds only against those who do not know the secret")

log = logging.getLogger("fedtune")
_announced = False


def _secret() -> bytes | None:
    value = os.environ.get(SECRET_ENV, "")
    return value.encode() if value else None


def secret_in_use() -> bool:
    """Whether ``FEDTUNE_DP_SECRET`` is set (non-empty) in this process's environment."""
    return _secret() is not None


def announce() -> bool:
    """Log :data:`WARNING` (once per process) if the secret is in use; returns whether it is."""
    global _announced
    if not secret_in_use():
        return False
    if not _announced:
        _announced = True
        log.warning("%s", WARNING)
    return True


def privacy_rng(purpose: str, *parts: int | str) -> np.random.Generator:
    """A generator for one use of a privacy mechanism (``purpose`` and ``parts`` name it, e.g.
    ``("dp-noise", fingerprint, round)``): fresh OS entropy on every call without the secret;
    with it, the same stream for the same (purpose, parts) and secret."""
    secret = _secret()
    if secret is None:
        return np.random.default_rng(np.random.SeedSequence())  # 128 bits from the OS
    announce()
    message = "|".join([purpose, *map(str, parts)]).encode()
    digest = hmac.new(secret, message, hashlib.sha256).digest()
    return np.random.default_rng(np.random.SeedSequence(int.from_bytes(digest, "little")))
