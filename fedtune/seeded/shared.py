"""A process's float32 model at exact shared-seed versions, shared between processes.

A version is an accumulated-coefficient vector A; its model is the exact integer-sum definition
of :mod:`fedtune.seeded.versions`, so every party that holds A holds the same weights bit for bit,
whichever versions it passed through. A process holds only the float32 weights: w0 and the
integer sums S are files, and a new version costs a pass over the entries of A that changed.

With a shared ``cache-dir`` (every process of a simulation, or a deployed node's successive
ClientApp processes), a computed version is published there; a process that is further behind
adopts the nearest published version instead of catching up alone, and a lock per version keeps
two processes from computing the same one. Files live in a folder per run identity (model
fingerprint, learning rate, seed pool, ...), and pruning touches that folder only.

FedKSeed (:mod:`fedtune.algorithms.fedkseed.model`) and Ferret build their models on this.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from fedtune.seeded.versions import VersionStore, codes_path

KEEP = 3  # published versions kept per run


def version_key(accumulated: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(accumulated, dtype=np.float32).tobytes()).hexdigest()


def pool_fingerprint(seeds: np.ndarray) -> int:
    """A 63-bit identity of the seed pool, sent with every round so a misconfigured client
    (other run seed or K) fails loudly instead of training along the wrong directions."""
    digest = hashlib.sha256(np.ascontiguousarray(seeds, dtype=np.uint64).tobytes()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


IDENTITY = "identity"
"""The round-config key of :func:`identity_digest` (sent instead of the identity's fields)."""


def identity_digest(identity: dict[str, str | int]) -> str:
    """128 bits of SHA-256 over the identity's fields (canonical JSON of their string values,
    as :func:`identity_mismatch` compares them), base64url without padding: 22 characters on
    the wire instead of every field, and as collision-resistant as the 128-bit model
    fingerprint it covers."""
    text = json.dumps({k: str(v) for k, v in identity.items()}, sort_keys=True)
    digest = hashlib.sha256(text.encode()).digest()[:16]
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def identity_mismatch(mine: dict[str, str | int], theirs: dict[str, object]) -> str | None:
    """One sentence naming what differs between this party's identity and the server's (a
    round config: the fields it carries are compared by name, and its :data:`IDENTITY` digest,
    if any, in full against the digest of all of this party's fields)."""
    differs = [k for k, v in mine.items() if k in theirs and str(theirs[k]) != str(v)]
    if not differs and IDENTITY in theirs and str(theirs[IDENTITY]) != identity_digest(mine):
        names = ["the model", "seed pool"] + [k for k in mine if k not in ("model", "pool")]
        return (", ".join(names[:-1]) + " or " + names[-1] + " of this client differ from the "
                "server's (its identity digest); run both with the same model, seed and "
                "algorithm settings")
    if not differs:
        return None
    what = {"model": "the model (parameter names, shapes, dtypes or w0 weights)",
            "pool": "the seed pool (seed or the pool size)"}
    names = [what.get(k, k) for k in differs]
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return (f"{listed} of this client differ{'s' if len(names) == 1 else ''} from the "
            "server's; run both with the same model, seed and algorithm settings")


@dataclass
class ZOModel:
    model: torch.nn.Module
    tokenizer: object
    params: list[torch.Tensor]
    seeds: np.ndarray
    lr: float  # the versions' step (FedKSeed's zo-lr, Ferret's server lr)
    eps: float  # FedKSeed's perturbation scale (Ferret: 0)
    store: VersionStore
    # What a version means here, under the round config's keys (FedKSeed: model, zo-lr,
    # zo-eps, pool; Ferret: model, ferret-server-lr, pool, blocks).
    identity: dict[str, str | int]
    version: str | None = None
    applied: list[int] = field(default_factory=list)  # seeds applied per load (for benchmarks)

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.params)

    @property
    def run_id(self) -> str:
        text = "|".join(f"{k}={v}" for k, v in sorted(self.identity.items()))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def load(self, accumulated: np.ndarray, cache_dir: str | Path | None = None) -> str:
        """Set the weights to the model of version ``accumulated``; returns its key."""
        key = version_key(accumulated)
        if key == self.version:
            self.store.restore()
            self.applied.append(0)
            return key
        folder = Path(cache_dir) / f"versions-{self.run_id}" if cache_dir else None
        if folder is None:
            self.applied.append(self.store.load(accumulated))
        else:
            folder.mkdir(parents=True, exist_ok=True)
            target = folder / f"S-{key[:32]}.i64"
            with _locked(target.with_suffix(".lock")):
                self._adopt_nearest(folder, self.store.codes_for(accumulated))
                self.applied.append(self.store.load(accumulated))
                if not target.exists():
                    self.store.publish(target)
                    _prune(folder)
        self.version = key
        return key

    def _adopt_nearest(self, folder: Path, codes: np.ndarray) -> None:
        """Adopt a published version that is closer to ``codes`` than the one held."""
        best, best_changes = None, int((self.store.codes != codes).sum())
        for s_file in folder.glob("S-*.i64"):
            try:
                theirs = np.load(codes_path(s_file))
            except (OSError, ValueError):
                continue  # being replaced or pruned
            changes = int((theirs != codes).sum())
            if changes < best_changes:
                best, best_changes = (theirs, s_file), changes
        if best is not None:
            try:
                self.store.adopt(*best)
            except FileNotFoundError:  # pruned meanwhile: catch up from what we hold
                pass

    def mark_changed(self) -> None:
        """The weights were moved in place (ZO steps); the next load restores them."""
        self.store.mark_changed()

    def checksum(self) -> str:
        """sha256 of the current weights (to check that parties agree bit for bit)."""
        h = hashlib.sha256()
        for p in self.params:
            h.update(p.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()


@contextmanager
def _locked(path: Path):
    """An exclusive lock (a lock file) held while one process computes a version."""
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _prune(folder: Path) -> None:
    """Keep the newest ``KEEP`` published versions of this run (its folder only)."""
    published = sorted(folder.glob("S-*.i64"), key=lambda p: p.stat().st_mtime)
    for old in published[:-KEEP]:
        old.unlink(missing_ok=True)
        codes_path(old).unlink(missing_ok=True)
        old.with_suffix(".lock").unlink(missing_ok=True)


def model_fingerprint(named: list[tuple[str, torch.Tensor]], w0_digest: str) -> str:
    h = hashlib.sha256()
    for name, p in named:
        h.update(f"{name}:{tuple(p.shape)}:{p.dtype};".encode())
    h.update(w0_digest.encode())
    return h.hexdigest()[:32]


