"""A warm process for the deployment tests' ServerApps and ClientApps (issue #27): one per
test cluster.

Flower 1.42 starts a new ``flwr-clientapp`` process for every message a SuperNode receives and a
new ``flwr-serverapp`` for every run, and each spends most of its CPU importing torch,
transformers, peft and Flower (3.7 CPU-s a train message here, 85% of it imports). This process
imports those libraries once. The ``flwr-clientapp`` and ``flwr-serverapp`` first on the
cluster's ``PATH`` (``tests/warm_apps/bin``, then ``launch.py``) hand it their command line,
environment, working folder and standard streams, and it forks one child per launch. The child
runs Flower's own entry point (``flwr.supernode.cli.flwr_clientapp``,
``flwr.superlink.cli.flwr_serverapp``) with that command line and exits: each message is still
its own process, which pulls its message, installs the run's FAB and loads the app from it
(Flower's code), then exits.

What keeps that equal to a fresh process: this process never imports the app (``fedtune``,
``client_app``, ``server_app``): it refuses to start, or to fork, once it has, so no
module-level state of the app survives from one message to the next (DESIGN: each message a new
process). It forks only while it has one thread. A child ends as Flower's process does, its exit
handlers run (the app's temporary folders removed), then ``os._exit``. This process exits when
the process that started it does.
A child is not in its SuperNode's (SuperLink's) process tree: Flower's ``--parent-pid`` check
ends it when that goes.

Usage: ``python warm.py SOCKET LOG``. One line per launch goes to LOG: ``launch PID ARGV0``, and
``exit PID CODE`` when the child ends; ``dropped a launch: ERROR`` for a launcher that died
mid-handshake (its SuperNode killed), after which the next launch is served.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import TextIO

APP_PACKAGES = ("fedtune", "client_app", "server_app")


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def _app_modules() -> list[str]:
    return sorted(m for m in sys.modules if m.split(".")[0] in APP_PACKAGES)


def _child(request: dict, fds: list[int], entry) -> None:
    """In the forked child: become the launched command and run it; never returns."""
    code = 1
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for target, fd in enumerate(fds):  # the launcher's stdin, stdout, stderr
            os.dup2(fd, target)
            os.close(fd)
        os.environ.clear()
        os.environ.update(request["env"])
        os.chdir(request["cwd"])
        sys.argv = request["argv"]
        try:
            entry()
            code = 0
        except SystemExit as done:  # Flower ends its processes with sys.exit(code)
            code = done.code if isinstance(done.code, int) else int(done.code is not None)
    except BaseException:  # noqa: BLE001 - a bug here must show in the node's log, not vanish
        import traceback

        traceback.print_exc()
    finally:
        try:  # what Flower's own process runs at its exit: atexit, weakref.finalize's cleanups
            atexit._run_exitfuncs()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)


def main(path: str, log_path: str) -> None:
    if app := _app_modules():
        raise SystemExit(f"the warm process imported the app ({app}): each child would reuse "
                         "its module state")
    started = time.process_time()
    import peft  # noqa: F401
    import torch  # noqa: F401
    from flwr.superlink.cli import flwr_serverapp
    from flwr.supernode.cli import flwr_clientapp
    from transformers.models.llama import modeling_llama  # noqa: F401

    serve(path, log_path, {"flwr-clientapp": flwr_clientapp, "flwr-serverapp": flwr_serverapp},
          f"{time.process_time() - started:.1f} CPU-s of imports")


def serve(path: str, log_path: str, entries: dict[str, Callable[[], object]],
          ready: str = "") -> None:
    """Fork ``entries[basename(argv[0])]`` for each launch on the socket at ``path``, until the
    process that started this one ends. A launch that fails (its launcher killed before it got
    the child's PID: a SuperNode killed mid-handshake) is logged and dropped; the next one is
    served."""
    parent = os.getppid()
    log = open(log_path, "a", buffering=1)  # noqa: SIM115 - open for the process's life
    if os.path.exists(path):
        os.unlink(path)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    os.umask(0o077)  # the socket: its owner only
    server.bind(path)
    server.listen(64)
    server.settimeout(0.5)
    log.write(f"ready {ready}\n")
    children: set[int] = set()
    while os.getppid() == parent:
        for pid in list(children):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                children.discard(pid)
                log.write(f"exit {pid} {os.waitstatus_to_exitcode(status)}\n")
        try:
            conn, _ = server.accept()
        except TimeoutError:
            continue
        with conn:
            try:
                _launch(conn, server, entries, children, log)
            except (OSError, ValueError, LookupError, TypeError) as err:  # a malformed launch
                log.write(f"dropped a launch: {err!r}\n")


def _launch(conn: socket.socket, server: socket.socket,
            entries: dict[str, Callable[[], object]], children: set[int], log: TextIO) -> None:
    """Read one launch request and its three streams from ``conn``, fork the child, answer
    its PID."""
    conn.settimeout(30)
    data, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
    try:
        while data and not data.endswith(b"\n"):
            more = conn.recv(1 << 20)
            if not more:
                break
            data += more
        request = json.loads(data)  # ValueError: the launcher left mid-request
        entry = entries[os.path.basename(request["argv"][0])]
        if len(fds) != 3:
            raise ValueError(f"{len(fds)} standard streams, not 3")
        if _app_modules() or _threads() != 1:  # never: checked so a change cannot hide it
            raise SystemExit(f"not forking: app modules {_app_modules()}, "
                             f"{_threads()} threads")
        pid = os.fork()
        if pid == 0:
            server.close()
            _child(request, fds, entry)
        children.add(pid)
        log.write(f"launch {pid} {request['argv'][0]}\n")
    finally:
        for fd in fds:
            os.close(fd)
    conn.sendall(f"{pid}\n".encode())


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
