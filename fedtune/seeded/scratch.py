"""Scratch files no dead process leaves behind.

A :class:`~fedtune.seeded.versions.VersionStore` keeps w0 and S in files as large as the model
in float32 (S: in int64, twice that): 4 and 8 GB for a billion parameters. Its process removes
them at exit, but a process killed by SIGKILL (or the OOM killer, or a power cut) runs no exit
handler, and a node that crashes now and then would fill its disk. So each S file is held under
an advisory lock (``flock``) for as long as its process lives; the kernel drops a dead process's
locks, so the next store made in the same folder (:func:`sweep_files`), or in the temp dir
(:func:`sweep_folders`), removes the files and folders whose holder is gone.

A live holder is never mistaken for a dead one: a file gets its final name only once it is
locked (it is made under a ``.pending`` name, locked, then linked); a folder counts as dead
only when it holds S files and none of them is locked; this process's own files are never
opened to be checked, and their holder reads and writes them through the one locked
descriptor (where ``flock`` is emulated by POSIX locks, on NFS, closing any other descriptor of
the file would drop the lock). Without ``fcntl`` (Windows) nothing is locked and nothing is
swept: files go at exit, as before.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - no flock on this platform: no sweeping
    fcntl = None  # type: ignore[assignment]

__all__ = ["held_file", "is_held", "release", "sweep_files", "sweep_folders"]

PENDING = ".pending"
_HELD: set[Path] = set()  # this process's held files (absolute paths)


def held_file(folder: Path, prefix: str, suffix: str) -> tuple[Path, int]:
    """A new empty file ``folder/<prefix><random><suffix>``, locked by this process for as long
    as the returned descriptor is open (close it when the file is removed)."""
    while True:
        fd, pending = tempfile.mkstemp(prefix=PENDING + prefix, suffix=suffix, dir=folder)
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        path = folder / (prefix + Path(pending).name[len(PENDING + prefix):])
        try:
            os.link(pending, path)  # the final name, only once locked; never over another file
        except FileExistsError:
            os.close(fd)
            continue
        finally:
            os.unlink(pending)
        _HELD.add(path.absolute())
        return path, fd


def release(path: Path, fd: int) -> None:
    """Remove a file from :func:`held_file` and close its descriptor (the lock goes with it)."""
    _HELD.discard(path.absolute())
    path.unlink(missing_ok=True)
    os.close(fd)


def is_held(path: Path) -> bool:
    """Whether a live process holds ``path``'s lock (False for a file no one holds)."""
    if fcntl is None or path.absolute() in _HELD:
        return True
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # (releases the lock it may have taken)
    return False


def sweep_files(folder: Path, prefix: str, suffix: str) -> list[Path]:
    """Remove ``folder``'s ``<prefix>*<suffix>`` files that no live process holds."""
    gone = [p for p in folder.glob(f"{prefix}*{suffix}") if not is_held(p)]
    for path in gone:
        path.unlink(missing_ok=True)
    return gone


def sweep_folders(base: Path, prefix: str, held: str) -> list[Path]:
    """Remove ``base``'s ``<prefix>*`` folders that hold ``held`` files (a glob) and no live
    process holds any of them. One that holds none is being made: it is left alone."""
    gone = []
    for folder in base.glob(f"{prefix}*"):
        with contextlib.suppress(OSError):  # another user's, or removed meanwhile
            files = list(folder.glob(held))
            if files and not any(is_held(p) for p in files):
                shutil.rmtree(folder, ignore_errors=True)
                gone.append(folder)
    return gone
