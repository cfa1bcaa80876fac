"""The deployment tests' harness: the guide's command blocks (``docs/deployment.md``, blocks
marked ``<!-- run: NAME -->``) run with ``bash`` as a reader would paste them, with the guide's
variables set to a temporary folder and free ports, and every process started here stopped
here by PID (tests/test_deployment.py, tests/test_deployment_signing.py)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "deployment.md"
# the environment's flower-superlink, flower-supernode and flwr (first on PATH for the guide)
BIN = Path(sys.executable).parent
# every process started here imports tests/fast_flower/sitecustomize.py: Flower's fixed 3 s
# polls take 1 s (heartbeats keep Flower's 30 s: see there); the same Flower code runs, each
# message exchange waits less (issue #27). Shorter polls
# cost CPU (SuperExec's at 0.25 s instead of its 1 s: +25% CPU-s for test_deployment.py)
FAST_FLOWER = Path(__file__).with_name("fast_flower")
# and the SuperLink's SQLite waits 60 s for a lock, not 5 s (a loaded CI machine: "database is
# locked", a failed run)
FAST = {"FEDTUNE_TEST_FLOWER_POLL": "1.0", "FEDTUNE_TEST_FLOWER_SQLITE_BUSY_MS": "60000"}
# a warm process that forks each ServerApp and ClientApp with torch, transformers, peft and
# Flower imported once (tests/warm_apps/warm.py); its flwr-serverapp and flwr-clientapp go
# first on the PATH of a cluster that starts one (Cluster.start_warm); FEDTUNE_TEST_WARM_APPS=0:
# Flower's own, fresh processes
WARM_APPS = Path(__file__).with_name("warm_apps")

BLOCK = re.compile(r"<!-- (run|example|variables): ([\w -]+?) -->\n```\w+\n(.*?)\n```", re.S)


def guide() -> dict[str, dict[str, str]]:
    """The guide's marked blocks: {"run": {name: text}, "example": ..., "variables": ...}."""
    blocks: dict[str, dict[str, str]] = {"run": {}, "example": {}, "variables": {}}
    for kind, name, text in BLOCK.findall(GUIDE.read_text()):
        blocks[kind][name] = text
    return blocks


GUIDE_VARS = sorted({v for text in guide()["variables"].values()
                     for v in re.findall(r"^export (\w+)=", text, re.M)})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path: Path, lines: int = 30) -> str:
    text = path.read_text(errors="replace") if path.exists() else "(no log)"
    return f"--- {path.name} ---\n" + "\n".join(text.splitlines()[-lines:])


def run_lines(log: Path, run_id: int | None = None) -> str:
    """A SuperNode's log, only the part from its messages of run ``run_id`` when given
    (Flower logs a ``[RUN <id>]`` line before each): a run that a failed test left going is
    not taken for the next test's."""
    text = log.read_text(errors="replace") if log.exists() else ""
    if run_id is None:
        return text
    return "".join(part for part in re.split(r"(?=\[RUN \d+\])", text)
                   if part.startswith(f"[RUN {run_id}]"))


def messages(log: Path, verb: str, kind: str = r"[\w.]+", run_id: int | None = None) -> int:
    r"""How many ``kind`` messages (``train``, ``evaluate``, ``query\.identify``: a regex; any by
    default) a SuperNode's log shows it ``verb`` (``Receiving``; ``Sending``: its reply), of run
    ``run_id`` when given."""
    return len(re.findall(rf"{verb}: {kind} message", run_lines(log, run_id)))


def kill_tree(pid: int, sig: int) -> list[psutil.Process]:
    """Signal a process and all its descendants (Flower starts SuperExec in its own session,
    so a process group would miss it); returns what was signalled."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    for proc in procs:
        try:
            proc.send_signal(sig)
        except psutil.NoSuchProcess:
            pass
    return procs


def stop_tree(pid: int) -> None:
    procs = kill_tree(pid, signal.SIGTERM)
    _, alive = psutil.wait_procs(procs, timeout=10)
    for proc in alive:
        kill_tree(proc.pid, signal.SIGKILL)
    psutil.wait_procs(alive, timeout=5)


@dataclass
class Cluster:
    """The guide's variables per role, the processes started, and how to run a guide block."""

    tmp: Path
    common: dict[str, str]
    procs: list[subprocess.Popen] = field(default_factory=list)
    node_ids: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    nodes: dict[str, subprocess.Popen] = field(default_factory=dict)  # running, by node name
    link: subprocess.Popen | None = None  # the SuperLink (guide block 'superlink')
    pending: dict[str, object] = field(default_factory=dict)  # started early, checked later
    warm: Path | None = None  # the warm process's socket (start_warm); None: fresh processes

    def env(self, home: str, **variables: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if k not in GUIDE_VARS + ["RUN_ID", "RUN_DIR"]}
        # OMP_NUM_THREADS=1: the "machines" here share a few cores, and every ClientApp and
        # ServerApp process would start one OpenMP thread per core (tiny tensors gain nothing,
        # and oversubscribed threads crawl: 4x slower steps on a loaded 2-core box)
        env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", FLWR_HOME=str(self.tmp / home),
                   FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
                   COLUMNS="250", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1",
                   PYTHONPATH=os.pathsep.join(filter(None, [str(FAST_FLOWER),
                                                            env.get("PYTHONPATH")])), **FAST)
        env.update({**self.common, **variables})
        if self.warm is not None:  # flwr-clientapp, flwr-serverapp: forked by the warm process
            env.update(PATH=f"{WARM_APPS / 'bin'}{os.pathsep}{env['PATH']}",
                       FEDTUNE_TEST_WARM_SOCKET=str(self.warm))
        return env

    def operator(self, **variables: str) -> dict[str, str]:
        return self.env("operator-flwr-home", **variables)

    def edge(self, name: str, certs: str | None = None) -> tuple[dict[str, str], Path]:
        """The variables of edge machine ``name`` (its own folder, key, data, cache, port)."""
        home = self.tmp / f"edge-{name}"
        env = self.env(f"edge-{name}/flwr-home", NAME=name, KEYS=str(home / "keys"),
                       DATA=str(home / f"{name}.jsonl"), CACHE=str(home / "cache"),
                       NODE_PORT=str(free_port()))
        if certs is not None:
            env["CERTS"] = certs
        return env, home

    def start_warm(self) -> subprocess.Popen | None:
        """Start the warm process (``tests/warm_apps/warm.py``), unless
        ``FEDTUNE_TEST_WARM_APPS=0``: the SuperLink and SuperNodes started after this fork
        their ServerApps and ClientApps from it. :meth:`wait_warm` before the first run."""
        if os.environ.get("FEDTUNE_TEST_WARM_APPS", "1") == "0":
            return None
        sock = self.tmp / "warm.sock"
        if len(str(sock)) > 100:  # a Unix socket's path has room for 107 bytes
            sock = Path(tempfile.mkdtemp(prefix="fedtune-warm-", dir="/tmp")) / "warm.sock"
        with open(self.tmp / "warm.out", "wb") as out:
            proc = subprocess.Popen([sys.executable, str(WARM_APPS / "warm.py"), str(sock),
                                     str(self.tmp / "warm.log")],
                                    env=self.env("warm-flwr-home"), stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        self.warm = sock
        return proc

    def wait_warm(self, proc: subprocess.Popen | None) -> None:
        """Return once the warm process listens (its imports take a few seconds)."""
        log, deadline = self.tmp / "warm.log", time.monotonic() + 300  # bounds a hang
        while proc is not None and not (log.exists() and "ready" in log.read_text()):
            assert proc.poll() is None and time.monotonic() < deadline, \
                (self.tmp / "warm.out").read_text(errors="replace")
            time.sleep(0.1)

    def warm_launches(self, command: str) -> dict[int, int | None]:
        """The warm process's children so far that ran ``command`` (``flwr-clientapp``,
        ``flwr-serverapp``): {pid: exit code, None while running}."""
        out: dict[int, int | None] = {}
        for line in (self.tmp / "warm.log").read_text().splitlines():
            what, *fields = line.split()  # also "ready ..." and "dropped a launch: ..."
            if what == "launch" and fields[1].endswith(command):
                out[int(fields[0])] = None
            elif what == "exit" and int(fields[0]) in out:
                out[int(fields[0])] = int(fields[1])
        return out

    def run(self, name: str, env: dict[str, str], cwd: Path | None = None,
            timeout: float = 300, check: bool = True, text: str | None = None
            ) -> subprocess.CompletedProcess:
        """Run guide block ``name`` to completion."""
        text = guide()["run"][name] if text is None else text
        out = subprocess.run(["bash", "-eu", "-o", "pipefail", "-c", text], env=env,
                             cwd=cwd or self.tmp, capture_output=True, text=True,
                             timeout=timeout)
        if check:
            assert out.returncode == 0, f"guide block '{name}' failed:\n{out.stdout}\n{out.stderr}"
        return out

    def run_all(self, jobs: list[tuple[str, dict[str, str]]], cwd: Path | None = None,
                timeout: float = 300) -> list[str]:
        """Run guide blocks ``(name, env)`` at the same time, as separate machines would
        (each block is a fresh CLI process that spends seconds importing); their stdouts."""
        procs = [subprocess.Popen(["bash", "-eu", "-o", "pipefail", "-c", guide()["run"][name]],
                                  env=env, cwd=cwd or self.tmp, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
                 for name, env in jobs]
        outs = []
        for (name, _), proc in zip(jobs, procs, strict=True):
            out, err = proc.communicate(timeout=timeout)
            assert proc.returncode == 0, f"guide block '{name}' failed:\n{out}\n{err}"
            outs.append(out)
        return outs

    def start(self, name: str, env: dict[str, str], log: Path, cwd: Path,
              text: str | None = None) -> subprocess.Popen:
        """Start long-running guide block ``name`` (SuperLink, SuperNode) in the background."""
        text = guide()["run"][name] if text is None else text
        with open(log, "wb") as fh:
            proc = subprocess.Popen(["bash", "-eu", "-c", text], env=env, cwd=cwd, stdout=fh,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def start_node(self, name: str, log: Path | None = None, block: str = "supernode"
                   ) -> tuple[subprocess.Popen, Path]:
        """Start edge machine ``name``'s SuperNode with guide block ``block``."""
        env, home = self.edge(name)
        log = log or self.tmp / f"supernode-{name}.log"
        self.nodes[name] = self.start(block, env, log, cwd=home)
        return self.nodes[name], log

    def start_superlink(self, log: Path) -> subprocess.Popen:
        """Guide block 'superlink' in its folder, on its database file (``$STATE``)."""
        env = self.env("superlink-flwr-home", STATE=str(self.tmp / "superlink" / "state"))
        self.link = self.start("superlink", env, log, cwd=self.tmp / "superlink")
        return self.link

    def launch(self, config: dict, tag: str) -> int:
        """Write a run.toml, ``flwr run`` it (guide block 'launch'), return the run id."""
        path = self.tmp / f"run-{tag}.toml"
        path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in config.items()))
        out = self.run("launch", self.operator(RUN_CONFIG=str(path)), cwd=ROOT)
        found = re.search(r"Successfully started run (\d+)", out.stdout + out.stderr)
        assert found, f"no run id in:\n{out.stdout}\n{out.stderr}"
        return int(found.group(1))

    def follow(self, run_id: int, timeout: float = 900) -> str:
        """``flwr log RUN_ID`` (guide block 'log'): streams until the run ends (``timeout``
        bounds a hang: CI's machines can be 3x slower than a developer's)."""
        out = self.run("log", self.operator(RUN_ID=str(run_id)), timeout=timeout)
        return out.stdout + out.stderr

    def show_log(self, run_id: int) -> str:
        """The run's ServerApp log so far (guide block 'log' with ``--show``: no wait for the
        run's end), for a failure's message: the logs of the processes say little of a run."""
        out = self.run("log", self.operator(RUN_ID=str(run_id)), timeout=120, check=False,
                       text=guide()["run"]["log"] + " --show")
        return f"--- the ServerApp's log of run {run_id} ---\n{out.stdout}{out.stderr}"

    def status(self, run_id: int) -> str:
        """The run's status column in ``flwr ls`` (guide block 'list')."""
        out = self.run("list", self.operator())
        row = next((line for line in out.stdout.splitlines() if str(run_id) in line), "")
        found = re.search(r"(finished:\w+|running|starting|pending)", row)
        assert found, f"run {run_id} not listed:\n{out.stdout}"
        return found.group(1)

    def node_status(self, name: str) -> str:
        out = self.run("nodes", self.operator())
        row = next((line for line in out.stdout.splitlines()
                    if str(self.node_ids[name]) in line), "")
        found = re.search(r"(online|offline|registered|unregistered)", row)
        assert found, f"node {name} not listed:\n{out.stdout}"
        return found.group(1)

    def logs(self) -> str:
        return "\n".join(tail(p) for p in sorted(self.tmp.glob("*.log")))

    def register(self, name: str, link: subprocess.Popen, deadline: float) -> int:
        """The operator registers edge machine ``name``'s public key (guide block register),
        retrying while the SuperLink starts; returns the node id Flower gave it."""
        env, _ = self.edge(name)
        while True:
            out = self.run("register", self.operator(KEYS=env["KEYS"], NAME=name), check=False)
            if out.returncode == 0 or time.monotonic() > deadline or link.poll() is not None:
                break
            time.sleep(1)  # the SuperLink is still starting
        assert out.returncode == 0, f"{out.stdout}\n{out.stderr}\n{self.logs()}"
        return int(re.search(r"SuperNode (\d+) registered", out.stdout).group(1))

    def register_all(self, names: list[str], link: subprocess.Popen, deadline: float) -> None:
        """:meth:`register` each of ``names`` at the same time (one ``flwr`` process each);
        their node ids into :attr:`node_ids`."""
        with ThreadPoolExecutor(len(names)) as pool:
            ids = list(pool.map(lambda name: self.register(name, link, deadline), names))
        self.node_ids.update(zip(names, ids, strict=True))


def write_examples(path: Path, examples) -> None:
    """Alpaca layout with its optional ``category`` (the built-in task's name)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"instruction": e.instruction, "input": e.input,
                                        "output": e.output, "category": e.category}) + "\n"
                            for e in examples))


def small_run(tmp: Path, tag: str, **overrides) -> dict:
    """A small run's settings; ``lora-r`` only for FedIT (another algorithm refuses the key)."""
    config = {"algorithm": "fedit", "num-server-rounds": 2, "local-steps": 2, "batch-size": 4,
              "eval-examples": 8, "eval-batch-size": 8, "max-new-tokens": 4,
              "fraction-train": 1.0, "fraction-evaluate": 0.0, "min-train-nodes": 2,
              "min-available-nodes": 2, "round-timeout": 300.0,
              "eval-data": str(tmp / "superlink" / "heldout.jsonl"),
              "run-dir": str(tmp / "runs" / tag)}
    config.update(overrides)
    if config["algorithm"] == "fedit":
        config.setdefault("lora-r", 4)
    return config


def rows(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
