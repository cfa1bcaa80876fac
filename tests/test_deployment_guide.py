"""The deployment guide and the deployment tests' processes, checked without a cluster: the
guide's blocks and variables are the ones ``tests/test_deployment.py`` runs, the overview quotes
only guide commands, and every process the cluster starts waits less in Flower's fixed polls
(``tests/fast_flower``)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.deployment_cluster import FAST, GUIDE_VARS, ROOT, Cluster, guide

pytestmark = pytest.mark.deployment


def test_guide_blocks_and_variables_agree_with_this_test():
    blocks = guide()
    assert set(blocks["run"]) >= {"certs", "superlink", "connection", "keys", "register",
                                  "supernode", "supernode-pinned", "nodes", "launch", "list",
                                  "log", "stop"}
    assert "resume" in blocks["run"]
    used = {v for text in blocks["run"].values() for v in re.findall(r"\$\{?(\w+)", text)}
    assert used - {"HOME", "FLWR_HOME", "RUN_ID", "RUN_DIR"} <= set(GUIDE_VARS), "undefined vars"
    assert set(GUIDE_VARS) == {"SUPERLINK_HOST", "PORT", "SUPERLINK", "CERTS", "STATE", "NAME",
                               "KEYS", "DATA", "CACHE", "NODE_PORT", "RUN_CONFIG",
                               "SIGNING", "APPS", "REGISTRY_PORT"}  # set below
    from fedtune.config import Config, tomllib

    example = tomllib.loads(blocks["example"]["run-config"])
    Config.from_flat(example)  # every key exists and every value is valid


def test_the_processes_here_wait_less_in_flowers_polls_not_its_heartbeats(tmp_path):
    """tests/fast_flower, imported by every process these tests start: Flower's fixed 3 s polls
    (a SuperNode's, the ServerApp grid's) sleep 1 s, other sleeps as they were, heartbeats keep
    Flower's 30 s (at 10 s a loaded machine's slow SuperLink took live nodes for lost), and the
    SuperLink's SQLite connections (a real database file) wait 60 s for a lock, not 5 s."""
    code = ("import time, flwr.superlink.grid.http_grid as g, "
            "flwr.supernode.start_client_internal as n, flwr.supernode.fleet_http_connection "
            "as f, flwr.supercore.heartbeat as h, flwr.supercore.sql_mixin as s, sys\n"
            "from sqlalchemy import create_engine, event, text\n"
            "t = time.monotonic(); g.time.sleep(3); n.time.sleep(3); polls = time.monotonic() - t\n"
            "t = time.monotonic(); n.time.sleep(0.5); other = time.monotonic() - t\n"
            "engine = create_engine(f'sqlite:///{sys.argv[1]}')  # as SqlMixin.initialize does\n"
            "event.listen(engine, 'connect', s._set_sqlite_pragmas)\n"
            "with engine.connect() as conn:\n"
            "    busy = conn.execute(text('PRAGMA busy_timeout')).scalar()\n"
            "print(polls, other, f.HEARTBEAT_DEFAULT_INTERVAL, h.HEARTBEAT_DEFAULT_INTERVAL, busy)")
    env = Cluster(tmp_path, {}).env("home")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "state.db")], env=env,
                         capture_output=True, text=True, timeout=300)
    polls, other, *beats, busy = map(float, out.stdout.split() or ["nan"] * 5)
    assert polls < 4.5 and 0.5 <= other < 1.5, (out.stdout, out.stderr)  # not 6 s; 0.5 s
    assert beats == [30.0, 30.0] and not any("HEARTBEAT" in key for key in FAST)
    assert busy == 60_000, (out.stdout, out.stderr)
    from flwr.common.constant import HEARTBEAT_DEFAULT_INTERVAL, HEARTBEAT_MIN_INTERVAL
    from flwr.supercore.constant import SQLITE_PRAGMAS

    assert HEARTBEAT_DEFAULT_INTERVAL == 30 and HEARTBEAT_MIN_INTERVAL == 10  # here: Flower's
    assert ("busy_timeout", "5000") in SQLITE_PRAGMAS


def test_the_warm_process_refuses_to_serve_once_the_app_is_imported(tmp_path):
    """tests/warm_apps/warm.py forks each deployment test's ClientApp; a child must not inherit
    the app's module state (each message a fresh process, as Flower starts it), so a warm
    process that has imported the app exits before it listens."""
    code = ("import sys; import fedtune.config; sys.path.insert(0, sys.argv[1]); import warm; "
            "warm.main(sys.argv[2], sys.argv[3])")
    out = subprocess.run([sys.executable, "-c", code, str(ROOT / "tests" / "warm_apps"),
                          str(tmp_path / "warm.sock"), str(tmp_path / "warm.log")],
                         env=Cluster(tmp_path, {}).env("home"), capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 1 and "imported the app (['fedtune'" in out.stderr, out.stderr
    assert not (tmp_path / "warm.sock").exists() and not (tmp_path / "warm.log").exists()


WARM_DIR = ROOT / "tests" / "warm_apps"


def _bare_warm(tmp_path: Path, entry: str) -> tuple[subprocess.Popen, Path, Path]:
    """``warm.serve`` without the heavy imports, serving ``flwr-clientapp`` with a function
    whose body is ``entry`` (Python, with ``sys`` imported); once ready: (process, socket,
    log)."""
    sock, log = tmp_path / "warm.sock", tmp_path / "warm.log"
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import warm\n"
            f"def entry():\n    {entry}\n"
            "warm.serve(sys.argv[2], sys.argv[3], {'flwr-clientapp': entry})")
    proc = subprocess.Popen([sys.executable, "-c", code, str(WARM_DIR), str(sock), str(log)])
    Cluster(tmp_path, {}).wait_warm(proc)  # the log at tmp_path / "warm.log" says ready
    return proc, sock, log


def _launch(sock: Path, *args: str) -> subprocess.CompletedProcess:
    """``flwr-clientapp ARGS`` through the warm process at ``sock``, as a SuperNode starts it."""
    return subprocess.run([sys.executable, "-S", str(WARM_DIR / "launch.py"), "bin/flwr-clientapp",
                           *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "FEDTUNE_TEST_WARM_SOCKET": str(sock)})


def test_the_warm_process_drops_a_launch_whose_launcher_died_and_serves_the_next(tmp_path):
    """A SuperNode killed while its ``flwr-clientapp`` hands its launch over (as in
    test_deployment.py's killed-node test) leaves the warm process a connection with nothing, or
    half a request, or no one to read the child's PID: it logs and drops that launch and serves
    the next. (It once died there, and the cluster's every later launch was refused.)"""
    ran = tmp_path / "ran"
    proc, sock, log = _bare_warm(tmp_path, f"open({str(ran)!r}, 'a').write("
                                           "' '.join(sys.argv[1:]) + chr(10))")
    try:
        deadline = time.monotonic() + 60
        streams = [os.open(os.devnull, os.O_RDWR) for _ in range(3)]
        request = json.dumps({"argv": ["flwr-clientapp", "orphan"], "env": {},
                              "cwd": str(tmp_path)}).encode() + b"\n"
        for send in (b"", request[:10], request):  # nothing; half a request; all, then gone
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                conn.connect(str(sock))
                if send:
                    socket.send_fds(conn, [send], streams)
        for fd in streams:
            os.close(fd)
        done = _launch(sock, "served")
        assert done.returncode == 0, done.stderr
        while "served" not in (ran.read_text() if ran.exists() else ""):
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        assert proc.poll() is None, log.read_text()
        assert log.read_text().count("dropped a launch") >= 2, log.read_text()
    finally:
        proc.kill()
        proc.wait()


def test_a_warm_child_ends_as_flowers_process_does_its_exit_handlers_run(tmp_path):
    """Flower ends a ClientApp process with ``sys.exit``, which runs its exit handlers: a
    FedKSeed node without ``cache-dir`` removes its temporary copy of the model there
    (``weakref.finalize``). A child of the warm process must do the same before its
    ``os._exit`` (it once skipped them, and each suite run left the model's copies in /tmp),
    and keep the exit code (the warm log's ``exit PID CODE``)."""
    made, cluster = tmp_path / "made", Cluster(tmp_path, {})
    proc, sock, log = _bare_warm(
        tmp_path, "import atexit, tempfile, weakref, shutil; "
        "d = tempfile.mkdtemp(dir=sys.argv[1]); entry.held = type('Held', (), {})(); "
        "weakref.finalize(entry.held, shutil.rmtree, d); "
        "atexit.register(lambda: open(sys.argv[1] + '/handled', 'w').close()); sys.exit(3)")
    try:
        made.mkdir()
        assert _launch(sock, str(made)).returncode == 0
        deadline = time.monotonic() + 60
        while None in (exits := cluster.warm_launches("flwr-clientapp")).values() or not exits:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        assert list(exits.values()) == [3], log.read_text()
        assert sorted(p.name for p in made.iterdir()) == ["handled"]  # the folder removed
    finally:
        proc.kill()
        proc.wait()


def test_overview_quotes_the_guides_commands():
    """The deployment overview (docs/deployment-overview.md) quotes commands; each must be (part
    of) a guide block that this module runs."""
    page = (ROOT / "docs" / "deployment-overview.md").read_text()
    section = page.split("# Deployment on real machines", 1)[1].split("\n## ", 1)[0]

    def norm(text: str) -> str:
        return " ".join(text.replace("\\\n", " ").split())

    runs = [norm(text) for text in guide()["run"].values()]
    quoted = [norm(q) for q in re.findall(r"`([^`]+)`", section)
              if q.startswith(("fedtune ", "flwr ", "flower-"))]
    assert len(quoted) >= 8
    for command in quoted:
        assert any(command in run for run in runs), \
            f"the overview quotes '{command}', not in the guide"
