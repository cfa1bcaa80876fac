"""Exact, incremental model versions for FedKSeed, with w0 and the integer sums off the device.

The model of version A (the accumulated-scalar vector every party holds) is *defined* as

    w = float32( float64(w0) - c * float64(S) ),   S = sum_s Aint_s * zcode_s,   c = lr * 2**-28

per weight, where ``Aint = rint(A * 2**16)`` (int64, :func:`to_codes`) and ``zcode_s`` is the
integer code of z(seed s) (``z = zcode / 4096``, :data:`fedtune.seeded.rng.ZCODE_TABLE`), so
``lr * Aint * zcode * 2**-28 = lr * A * z`` up to the 2**-16 quantum of A. Integer addition is
associative, so a party at version v reaches version r by adding only
``(Aint_r - Aint_v)_s * zcode_s`` for the seeds whose entry changed, and holds the same S, hence
the same bits of w, as a party that summed every seed from zero, on any device.

Bounds (checked): |A| < 2**20, |zcode| <= 17,715 < 2**14.2 and K <= 2**12 keep
|S| < 2**20 * 2**16 * 2**14.2 * 2**12 = 2**62.2 inside int64; larger pools need a smaller |A|
(:func:`check_bounds`; :func:`max_seeds` = 7,576 is the largest K it takes). Rounding A to
2**-16 moves a weight by at most lr * K * 2**-17 * max|z| = lr * K * 2**-17 * 4.325 (0.135 * lr
at K = 4096, every rounding at its worst with the same sign); the errors are independent and
uniform, so typically by lr * sqrt(K / 12) * 2**-16 (RMS 2.8e-4 * lr at K = 4096), far below
one ZO step (:func:`quantisation_error`).

Blocks (Ferret, Shu et al., ICML 2025): with ``blocks`` (a block id per parameter), A has one
entry per (block, seed), entry ``b * K + k`` scaling seed k's z on block b's parameters only, and
``S = sum_k Aint_{b(p),k} * zcode_k`` per weight of parameter p; each block then stays within the
bound above. ``frac_bits`` sets A's quantum 2**-frac_bits (16 for FedKSeed, whose A holds
accumulated directional derivatives; Ferret's projection coefficients are smaller and need a
finer quantum).

Memory: the process holds only the float32 parameters (on their device). w0 and S live in files
(:class:`VersionStore`), streamed one chunk at a time with explicit reads and writes (no mmap), so
the resident set stays at the weights plus a chunk.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import weakref
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from fedtune.seeded.rng import Z_FRAC_BITS, ZCODE_TABLE
from fedtune.seeded.scratch import held_file, release, sweep_files, sweep_folders

__all__ = ["A_FRAC_BITS", "A_LIMIT", "VersionStore", "a_limit", "check_bounds", "codes_path",
           "max_seeds", "quantisation_error", "scale", "to_codes"]

TEMP_PREFIX = "fedtune-zo-"  # a store's own folder in the temp dir, without a cache-dir
S_PREFIX, S_SUFFIX = ".S-", ".i64"  # a store's S file (held: fedtune.seeded.scratch)

A_FRAC_BITS = 16
A_LIMIT = 2.0**20
CHUNK = 1 << 18  # elements per streamed chunk: about 10 MiB of temporaries


def check_bounds(k: int, limit: float = A_LIMIT, frac_bits: int = A_FRAC_BITS) -> None:
    """Raise unless K seeds with |A| < ``limit`` keep every S inside int64."""
    worst = limit * 2**frac_bits * int(ZCODE_TABLE.abs().max()) * k
    if worst >= 2**63:
        raise ValueError(f"K={k} seeds with |A| < {limit:g} could overflow the integer version "
                         "sums; use a smaller seed pool")


def max_seeds() -> int:
    """The largest K :func:`check_bounds` accepts: K * |A|max * 2**frac_bits * max|zcode| < 2**63,
    where |A|max * 2**frac_bits = 2**36 at every quantum (:func:`a_limit`), so 7,576."""
    per_seed = int(A_LIMIT) * 2**A_FRAC_BITS * int(ZCODE_TABLE.abs().max())
    return (2**63 - 1) // per_seed


def quantisation_error(k: int, frac_bits: int = A_FRAC_BITS) -> tuple[float, float]:
    """How far rounding A to 2**-frac_bits moves one weight, in units of lr: (worst case, RMS).

    Each of the K entries scaling a weight's z is off by at most half a quantum, uniformly, so
    the worst case is K * 2**-(frac_bits+1) * max|z| and the RMS sqrt(K * E[z^2] / 12) * quantum.
    """
    quantum = 2.0**-frac_bits
    z = ZCODE_TABLE.double() / 2**Z_FRAC_BITS
    worst = k * quantum / 2 * float(z.abs().max())
    rms = (k * float((z * z).mean()) / 12) ** 0.5 * quantum
    return worst, rms


def a_limit(frac_bits: int = A_FRAC_BITS) -> float:
    """The largest |A| the exact versions take with a quantum of 2**-frac_bits (2**20 at 16)."""
    return A_LIMIT * 2.0 ** (A_FRAC_BITS - frac_bits)


def to_codes(accumulated: np.ndarray, frac_bits: int = A_FRAC_BITS) -> np.ndarray:
    """``rint(A * 2**frac_bits)`` as int64 (one deterministic rounding on every party)."""
    a = np.asarray(accumulated, dtype=np.float64)
    if not np.all(np.isfinite(a)):
        raise ValueError("the accumulated vector contains NaN or Inf")
    limit = a_limit(frac_bits)
    if a.size and float(np.abs(a).max()) >= limit:
        raise ValueError(f"an accumulated scalar reached {float(np.abs(a).max()):.3g}, beyond the "
                         f"exact-version limit {limit:g}; lower the learning rate or clip scalars")
    return np.rint(a * 2.0**frac_bits).astype(np.int64)


def scale(lr: float, frac_bits: int = A_FRAC_BITS) -> float:
    """c in w = w0 - c * S."""
    return float(lr) * 2.0 ** -(frac_bits + Z_FRAC_BITS)


class VersionStore:
    """w0 and S of one process's model in files, and the float32 parameters they define.

    ``params`` are the model's ZO parameters (any device, float32). At construction their values
    are w0: they are written to ``folder/w0-<digest>.f32`` (shared: one per model) and S starts
    at zero in a file of this process. :meth:`load` brings the parameters to a version,
    :meth:`restore` back to the current one after local steps, :meth:`load_w0` to w0.
    ``blocks``: a block id (0 .. L-1) per parameter, for per-block coefficients (A then has
    L * K entries); None: one block, A has one entry per seed (FedKSeed).
    """

    def __init__(self, params: list[torch.Tensor], seeds: np.ndarray, lr: float,
                 folder: str | Path | None = None, chunk: int = CHUNK, *,
                 blocks: Sequence[int] | None = None, frac_bits: int = A_FRAC_BITS) -> None:
        if any(p.dtype != torch.float32 for p in params):
            raise ValueError("exact versions need float32 parameters")
        check_bounds(len(seeds), a_limit(frac_bits), frac_bits)
        self.params = params
        self.seeds = np.asarray(seeds, dtype=np.int64)
        self.blocks = np.zeros(len(params), np.int64) if blocks is None else np.asarray(blocks)
        if self.blocks.shape != (len(params),) or (len(params) and self.blocks.min() < 0):
            raise ValueError(f"need one block id >= 0 per parameter ({len(params)})")
        self.num_blocks = int(self.blocks.max()) + 1 if len(params) else 1
        self.frac_bits = frac_bits
        self.c = scale(lr, frac_bits)
        self.chunk = chunk
        self.sizes = [p.numel() for p in params]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)
        # a SIGKILLed process's files are removed by the next store (fedtune.seeded.scratch)
        if folder is None:
            sweep_folders(Path(tempfile.gettempdir()), TEMP_PREFIX, f"{S_PREFIX}*{S_SUFFIX}")
            folder = tempfile.mkdtemp(prefix=TEMP_PREFIX)
            weakref.finalize(self, _remove_tree, folder)
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        sweep_files(self.folder, S_PREFIX, S_SUFFIX)
        self.s_path, self._s_fd = held_file(self.folder, S_PREFIX, S_SUFFIX)
        weakref.finalize(self, release, self.s_path, self._s_fd)
        os.truncate(self._s_fd, 8 * int(self.offsets[-1]))  # S = 0 (sparse)
        self.w0_path = self._write_w0()
        # the version S holds: entry b * K + k is seed k on block b
        self.codes = np.zeros(self.num_blocks * len(self.seeds), dtype=np.int64)
        self.current = True  # whether the parameters equal the version's weights

    # ---- files -----------------------------------------------------------------------------
    def _s_file(self, mode: str):
        """S, through the held descriptor (closing another would drop its lock on NFS)."""
        file = os.fdopen(self._s_fd, mode, closefd=False)
        file.seek(0)
        return file

    def _write_w0(self) -> Path:
        """Write w0 (the parameters now) once per distinct model and hash it; returns its path.
        One tensor at a time crosses to the host, so the transient is the largest tensor."""
        tmp = self.folder / f".w0.{os.getpid()}.{id(self)}.tmp"
        h = hashlib.sha256()
        with tmp.open("wb") as fh:
            for p in self.params:
                host = p.detach().to("cpu").contiguous().view(-1).numpy()
                h.update(memoryview(host).cast("B"))
                host.tofile(fh)
        self.w0_digest = h.hexdigest()
        path = self.folder / f"w0-{self.w0_digest[:24]}.f32"
        if path.exists():
            tmp.unlink()
        else:
            os.replace(tmp, path)
        return path

    # ---- versions ----------------------------------------------------------------------------
    def codes_for(self, accumulated: np.ndarray) -> np.ndarray:
        """The integer codes of version ``accumulated`` (:func:`to_codes` at this quantum)."""
        return to_codes(accumulated, self.frac_bits)

    @torch.no_grad()
    def _rewrite(self, changes: dict[int, tuple[list[int], np.ndarray]], *, update_s: bool,
                 from_w0_only: bool = False, only_changed: bool = False) -> None:
        """One streamed pass: S += sum deltas z-codes for each block's ``changes`` (block ->
        (seeds, deltas), if ``update_s``), params = w0 - c S; ``only_changed`` skips the
        parameters of blocks without changes (their weights are already the version's)."""
        from fedtune.seeded.fused import add_codes_

        i64, f32 = np.dtype(np.int64), np.dtype(np.float32)
        with self._s_file("r+b") as s_file, self.w0_path.open("rb") as w0_file:
            for index, p in enumerate(self.params):
                seeds, deltas = changes.get(int(self.blocks[index]), ([], np.zeros(0, np.int64)))
                if only_changed and not seeds:
                    continue
                flat = p.view(-1)
                for start in range(0, flat.numel(), self.chunk):
                    n = min(self.chunk, flat.numel() - start)
                    at = int(self.offsets[index]) + start
                    w0_file.seek(at * 4)
                    w0 = torch.from_numpy(np.fromfile(w0_file, dtype=f32, count=n))
                    if from_w0_only:
                        flat[start:start + n].copy_(w0)
                        continue
                    s_file.seek(at * 8)
                    s = torch.from_numpy(np.fromfile(s_file, dtype=i64, count=n))
                    if update_s and len(seeds):
                        s_dev = s.to(p.device)
                        add_codes_(s_dev, seeds, torch.from_numpy(deltas), index, start)
                        s = s_dev.cpu()
                        s_file.seek(at * 8)
                        s.numpy().tofile(s_file)
                    w = w0.to(p.device, torch.float64) - self.c * s.to(p.device, torch.float64)
                    flat[start:start + n].copy_(w.to(torch.float32))

    @torch.no_grad()
    def version_chunk(self, index: int, start: int, n: int) -> torch.Tensor:
        """Elements ``start .. start + n - 1`` of parameter ``index`` at the held version (float32,
        on the parameter's device), read from w0 and S: the weights before local steps, without
        a copy of the model."""
        at = int(self.offsets[index]) + start
        with self._s_file("rb") as s_file, self.w0_path.open("rb") as w0_file:
            w0_file.seek(at * 4)
            w0 = torch.from_numpy(np.fromfile(w0_file, dtype=np.float32, count=n))
            s_file.seek(at * 8)
            s = torch.from_numpy(np.fromfile(s_file, dtype=np.int64, count=n))
        device = self.params[index].device
        w = w0.to(device, torch.float64) - self.c * s.to(device, torch.float64)
        return w.to(torch.float32)

    def load(self, accumulated: np.ndarray) -> int:
        """Set the parameters to the model of ``accumulated``; returns how many entries of A it
        took (those whose code changed since the version held)."""
        new = self.codes_for(accumulated)
        if new.shape != self.codes.shape:
            raise ValueError(f"A has {new.size} entries but the pool has {self.codes.size} "
                             f"({self.num_blocks} block(s) x {self.seeds.size} seeds)")
        changed = np.flatnonzero(new != self.codes)
        if not changed.size and self.current:
            return 0
        k = self.seeds.size
        changes: dict[int, tuple[list[int], np.ndarray]] = {}
        for block in np.unique(changed // k):
            at = changed[changed // k == block]
            changes[int(block)] = ([int(s) for s in self.seeds[at % k]],
                                   new[at] - self.codes[at])
        self._rewrite(changes, update_s=True, only_changed=self.current)
        self.codes = new
        self.current = True
        return int(changed.size)

    def restore(self) -> None:
        """Undo local steps: the parameters become the held version's weights again, exactly."""
        if not self.current:
            self._rewrite({}, update_s=False)
            self.current = True

    def load_w0(self) -> None:
        """The parameters become w0 (e.g. for a DPO reference); :meth:`restore` undoes it."""
        self._rewrite({}, update_s=False, from_w0_only=True)
        self.current = False

    def mark_changed(self) -> None:
        """Call after changing the parameters in place (ZO steps), so the next load restores."""
        self.current = False

    def adopt(self, codes: np.ndarray, s_file: Path) -> None:
        """Take over a version another process computed: its codes and its S file (copied)."""
        with s_file.open("rb") as src, self._s_file("r+b") as dst:
            while block := src.read(64 << 20):
                dst.write(block)
        self.codes = np.asarray(codes, dtype=np.int64).copy()
        self.current = False

    def publish(self, path: Path) -> None:
        """Copy this version's S to ``path`` atomically (for other processes to adopt)."""
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with self._s_file("rb") as src, tmp.open("wb") as dst:
            while block := src.read(64 << 20):
                dst.write(block)
        codes_tmp = path.with_name(f".{path.stem}.{os.getpid()}.codes.npy")
        np.save(codes_tmp, self.codes)
        os.replace(codes_tmp, codes_path(path))
        os.replace(tmp, path)  # last: a visible S file always has its codes beside it


def codes_path(s_file: Path) -> Path:
    """Where a published S file's version codes are kept."""
    return s_file.with_name(s_file.stem + ".codes.npy")


def _remove_tree(folder: str) -> None:
    import shutil

    shutil.rmtree(folder, ignore_errors=True)
