"""``flwr-clientapp`` and ``flwr-serverapp`` for the deployment tests' cluster (``bin/``): hands
the command line, environment, working folder and standard streams to the warm process
(``warm.py``), which forks Flower's real one for it. Run with ``python -S`` (nothing but the
standard library)."""

import json
import os
import socket
import sys

with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
    conn.connect(os.environ["FEDTUNE_TEST_WARM_SOCKET"])
    request = {"argv": sys.argv[1:], "env": dict(os.environ), "cwd": os.getcwd()}
    socket.send_fds(conn, [json.dumps(request).encode() + b"\n"], [0, 1, 2])
    if not conn.recv(64):  # the child's PID once it is forked
        sys.exit(f"{sys.argv[1]}: the warm process did not fork")
