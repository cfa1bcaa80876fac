"""Flower's Simulation Engine (Ray) through the ``fedtune`` command: a run killed with SIGKILL
after round 2 and resumed, both on Ray, with the same results folder as the in-process run's,
bit for bit.

These are the suite's only Ray launches, and they share this file on purpose: pytest-xdist
(``--dist loadfile``) runs a file on one worker, so two Ray clusters never compete for the
cores. (A separate Ray run of ``fedtune simulate`` was one Ray launch more, 34 CPU-s of the
suite's; the resumed run checks what it did.) Every other end-to-end test runs the same
ServerApp and ClientApps on the in-process grid (tests/inprocess_grid.py)."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest

from fedtune.checkpoint import CHECKPOINT, load_checkpoint
from tests.inprocess_grid import simulate_in_process
from tests.test_checkpoint import final_state, rows


@pytest.fixture(autouse=True)
def ray_actors_at_nice_0(monkeypatch):
    """Ray starts its workers at nice 15: beside the other test workers (nice 0) the actors got
    a small share of the cores, and the Ray run took 155-191 s instead of 30 s, the SIGKILL test
    122-299 s instead of 63 s. The runs here start Ray with its workers at nice 0. (``fedtune
    simulate`` keeps Ray's 15: on a quiet machine the server's work is what the run waits for,
    and actors at nice 0 made the default run 1-3 s slower; docs/testing.md.)"""
    monkeypatch.setenv("RAY_worker_niceness", "0")


def launch(tmp_path, *args: str, **popen) -> subprocess.Popen:
    """``fedtune ARGS`` in ``tmp_path``, its stdout and stderr in one pipe."""
    return subprocess.Popen([sys.executable, "-m", "fedtune.cli", *args], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def ray_workers(proc: subprocess.Popen) -> tuple[dict[int, int], set[int], set[int], str]:
    """What ``proc`` starts in Ray, sampled until it ends: the niceness of each actor process
    (``ray::ClientActor``, fedtune's) by PID, the PIDs of all worker processes (actors, idle
    workers, workers still starting: ``default_worker.py``), those started through a runtime
    env's ``setup_worker.py``, and its output (read meanwhile: a full pipe would block it)."""
    out, actors, workers, setups = [], {}, set(), set()
    reader = threading.Thread(target=lambda: out.append(proc.stdout.read()), daemon=True)
    reader.start()
    while proc.poll() is None:
        try:
            children = psutil.Process(proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            children = []
        for child in children:
            try:
                cmd = child.cmdline()
                title = (cmd or [""])[0]  # ray::ClientActor.run while it handles a message
                if title.startswith("ray::ClientActor") and child.pid not in actors:
                    actors[child.pid] = child.nice()
                if title.startswith(("ray::ClientActor", "ray::IDLE")) or \
                        any(part.endswith("default_worker.py") for part in cmd):
                    workers.add(child.pid)
                if any(part.endswith("setup_worker.py") for part in cmd):
                    setups.add(child.pid)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        time.sleep(0.2)
    reader.join(timeout=60)
    output = "".join(out)
    assert proc.returncode == 0, output[-3000:]
    return actors, workers, setups, output


# ---- `fedtune simulate` (Ray) killed with SIGKILL, then `--resume` ----------------------------
SIM = ("local-steps=2 examples-per-client=16 eval-examples=8 client-eval-examples=4 "
       "max-new-tokens=2 fraction-train=1.0 fraction-evaluate=0.0 ")
# Each case costs two Ray launches and an in-process run (about 40 s on 2 cores), so CI runs
# the SIGKILL path for FedIT with FedAdam's moments on the server (its adapters, over 100 KB a
# message, go through Ray's object store); FedKSeed-Pro (state in the algorithm, a version
# cache on disk) is resumed bit-identically in tests/test_checkpoint.py's
# test_resume_after_a_crash_is_bit_identical, and through SIGKILL with FEDTUNE_SLOW_TESTS=1.
SIM_CASES = {
    "fedit-fedadam": ["--run-config", SIM + "strategy='fedadam' server-lr=0.01"],
    "fedkseed-pro": ["--algorithm", "fedkseed-pro", "--run-config",
                     SIM + "zo-seeds=64 zo-steps=4 batch-size=2"],
}
SLOW = pytest.mark.skipif(not os.environ.get("FEDTUNE_SLOW_TESTS"),
                          reason="another 40 s of Ray runs; set FEDTUNE_SLOW_TESTS=1")
CLIENTS = ["--num-clients", "3", "--rounds", "4"]  # more clients than the 2 cores' actors


@pytest.mark.slow  # the suite's two Ray launches
@pytest.mark.parametrize("case", ["fedit-fedadam", pytest.param("fedkseed-pro", marks=SLOW)])
def test_ray_runs_the_command_and_resumes_a_sigkilled_run_bit_identically(tmp_path, case,
                                                                          one_thread):
    """``fedtune simulate`` on Ray, killed with SIGKILL after round 2 (the server, Ray and its
    actors at once), then ``fedtune simulate --resume`` on Ray to the end: the results folder
    is the uninterrupted run's, bit for bit. The uninterrupted run is the same command on the
    in-process grid (bit-identical to Ray's, which saves a third Ray launch).

    The resumed run is also the suite's check of the engine itself: Ray starts, its actors
    import the ClientApp and serve three clients, the table is printed and the folder written.
    Its actors run at the niceness the fixture above asks for, or a Ray that ignored it would
    slow these tests 2-5x again, unseen; Ray starts no worker process but the actors
    (``fedtune simulate`` turns off Ray's idle workers started with the driver: 4 worker
    processes on 2 cores instead of 2), and starts none through a runtime env's
    ``setup_worker.py`` (fedtune's backend, ``fedtune/flower/ray_backend.py``)."""
    assert simulate_in_process([*CLIENTS, "--output-dir", str(tmp_path), "--name", "whole",
                                *SIM_CASES[case]]) == 0
    (whole,) = tmp_path.glob("whole-*")

    proc = launch(tmp_path, "simulate", *CLIENTS, "--output-dir", str(tmp_path), "--name",
                  "killed", *SIM_CASES[case], start_new_session=True)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        runs = list(tmp_path.glob("killed-*/" + CHECKPOINT))
        if runs and load_checkpoint(runs[0].parent).round >= 2:
            break
        time.sleep(0.1)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # the server and everything it started, Ray included
    proc.communicate(timeout=300)
    (killed,) = tmp_path.glob("killed-*")
    at_kill = load_checkpoint(killed).round
    assert 2 <= at_kill < 4 and not (killed / "summary.json").exists()

    actors, workers, setups, out = ray_workers(launch(tmp_path, "simulate", "--resume",
                                                      str(killed)))
    assert f"resuming {killed} after round {at_kill}" in out
    assert "round   4/4" in out and "exact_match" in out
    assert set(actors.values()) == {0}, actors
    assert actors and workers == set(actors), (workers, actors)
    assert not setups, setups  # no runtime env: no second Python process per worker
    assert final_state(killed) == final_state(whole)
    got = rows(killed)
    assert got == rows(whole)
    assert all(r["clients"] == 3 for r in got[1:])
    if case == "fedit-fedadam":
        assert all(r["bytes_up_per_client"] > 100_000 for r in got[1:])
    assert files(killed) == files(whole)
    assert json.loads((killed / "summary.json").read_text())["final"]["round"] == 4
    assert (killed / "metrics.png").stat().st_size > 10_000


def files(run_dir) -> set[str]:
    """The results folder's files, by path inside it."""
    return {str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file()}


@pytest.mark.slow  # a third Ray start, without actors: about 3 s
def test_fedtunes_backend_keeps_flowers_simulation_package_out_of_actors_and_rays_wait_out():
    """The two start-up and teardown costs ``fedtune/flower/ray_backend.py`` removes, on the
    pinned Ray: the actor class's module imports no ``flwr.simulation`` (whose package brings
    the SuperLink's state: 0.8 CPU-s per actor), and Ray's autoscaler monitor, found through
    Ray's own handle on its processes, is stopped before ``ray.shutdown()`` would give it its
    full second of grace. A Ray that moved that handle would make ``stop_monitor`` find nothing
    (False), and this test fail, rather than every run end a second later unseen."""
    code = ("import sys, time\n"
            "import psutil, ray\n"
            "import fedtune.flower.ray_actor\n"
            "print('flwr.simulation' in sys.modules)\n"
            "from fedtune.flower.ray_backend import stop_monitor\n"
            "ray.init(num_cpus=1, include_dashboard=False, logging_level='ERROR')\n"
            "(monitor,) = ray._private.worker._global_node.all_processes['monitor']\n"
            "pid = monitor.process.pid\n"
            "stopped = stop_monitor()\n"
            "def gone():\n"
            "    try:\n"
            "        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE\n"
            "    except psutil.NoSuchProcess:\n"
            "        return True\n"
            "deadline = time.monotonic() + 60  # SIGKILL takes effect soon, not at once\n"
            "while not gone() and time.monotonic() < deadline:\n"
            "    time.sleep(0.05)\n"
            "print(stopped, gone(), stop_monitor())\n"
            "ray.shutdown()\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["False", "True", "True", "False"], done.stderr[-3000:]
