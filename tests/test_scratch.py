"""A killed process's w0 and S files are removed by the next store; a live one's are not
(fedtune/seeded/scratch.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from fedtune.seeded import scratch
from fedtune.seeded.versions import TEMP_PREFIX, VersionStore

pytestmark = pytest.mark.skipif(scratch.fcntl is None, reason="no flock on this platform")

HOLDER = """
import sys, time, torch, numpy as np
from fedtune.seeded.versions import VersionStore
params = [torch.arange(12, dtype=torch.float32)]
kept = [VersionStore(params, np.arange(4), 1e-3, folder) for folder in (sys.argv[1], None)]
for store in kept:
    store.load(np.ones(4))
print(kept[0].s_path, kept[1].folder, flush=True)
time.sleep(600)
"""


def _holder(cache: Path, tmp: Path) -> tuple[subprocess.Popen, Path, Path]:
    """A process holding a store in ``cache`` and one in its temp dir ``tmp``."""
    env = {**os.environ, "TMPDIR": str(tmp)}
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(cache)], env=env,
                            stdout=subprocess.PIPE, text=True)
    s_file, folder = proc.stdout.readline().split()
    return proc, Path(s_file), Path(folder)


def test_a_sigkilled_stores_files_go_with_the_next_store_a_live_ones_stay(tmp_path, monkeypatch):
    cache, tmp = tmp_path / "cache", tmp_path / "tmp"
    cache.mkdir(), tmp.mkdir()
    dead, live = _holder(cache, tmp), _holder(cache, tmp)
    try:
        dead[0].send_signal(signal.SIGKILL)  # no exit handler runs
        dead[0].wait(30)
        for _, s_file, folder in (dead, live):
            assert s_file.exists() and any(folder.glob(".S-*.i64"))
        monkeypatch.setattr(tempfile, "tempdir", str(tmp))
        params = [torch.arange(12, dtype=torch.float32)]
        mine = [VersionStore(params, np.arange(4), 1e-3, cache),
                VersionStore(params, np.arange(4), 1e-3)]
        _, s_file, folder = dead
        assert not s_file.exists() and not folder.exists()  # the dead process's: removed
        _, s_file, folder = live
        assert s_file.exists() and folder.exists()  # the live one's: kept
        assert sorted(p.name for p in cache.glob(".S-*.i64")) == sorted(
            [s_file.name, mine[0].s_path.name])
        assert sorted(tmp.glob(f"{TEMP_PREFIX}*")) == sorted([folder, mine[1].folder])
        # another store in this process keeps its files too, and they still work
        VersionStore(params, np.arange(4), 1e-3, cache)
        assert mine[0].s_path.exists()
        for store in mine:
            assert store.load(np.ones(4)) == 4  # its S read and written through its descriptor
    finally:
        for proc, *_ in (dead, live):
            proc.kill()
            proc.wait(30)


def test_a_file_is_held_from_its_first_moment_and_released_with_its_descriptor(tmp_path):
    path, fd = scratch.held_file(tmp_path, ".S-", ".i64")
    assert path.name.startswith(".S-") and not list(tmp_path.glob(".pending*"))
    code = ("import sys; from pathlib import Path; from fedtune.seeded import scratch; "
            "print(scratch.is_held(Path(sys.argv[1])))")
    seen = lambda: subprocess.run([sys.executable, "-c", code, str(path)],  # noqa: E731
                                  capture_output=True, text=True).stdout.strip()
    assert seen() == "True" and scratch.sweep_files(tmp_path, ".S-", ".i64") == []
    os.close(fd)  # as a killed process's descriptors are
    scratch._HELD.discard(path.absolute())
    assert seen() == "False"
    assert scratch.sweep_files(tmp_path, ".S-", ".i64") == [path] and not path.exists()
