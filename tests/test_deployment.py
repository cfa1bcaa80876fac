"""Deployment end to end: a real SuperLink (TLS + SuperNode authentication), real SuperNodes
on 127.0.0.1, real ``flwr`` commands, all started and stopped here by PID.

The commands are not written in this file: they are read from ``docs/deployment.md`` (the fenced
blocks marked ``<!-- run: NAME -->``) and run with ``bash`` exactly as a reader would paste
them, with the guide's variables (``$CERTS``, ``$PORT``, ``$NAME``, ...) set to a temporary
folder and free ports. So the guide is the one source of the command lines: a change there is
what this test runs, and a guide command that breaks fails here. (The deployment overview,
docs/deployment-overview.md, points to the guide instead of repeating the commands.)

Costs: every message starts a new ClientApp process on a node. Here each is forked from one warm
process that imported torch, transformers, peft and Flower once (``tests/warm_apps``; this module
used 139-142 CPU-s instead of 292, alone on a quiet 2-core machine). The child runs Flower's own
``flwr-clientapp`` and loads the app from the run's FAB, as a fresh process does;
``FEDTUNE_TEST_WARM_APPS=0`` starts fresh ones, and tests/test_deployment_signing.py always does.
Still, the runs are few and small (2 rounds, 2 local steps, 8 held-out examples) and each checks
several things: the FedKSeed run learns, evaluates on the nodes and shows each node's own file;
the Ferret run goes on while a node pinned to DP refuses it, and the same node takes part in the
DP run in which it is killed; one FedIT run goes through a SuperNode restart, a SuperLink
restart and its resumption.

Start-up is paid once: one cluster for the module, the edge machines' CLI blocks (keys,
registration) run at the same time, the pinned node serves the Ferret and the killed-node test,
the refusals run while the killed node's round waits. ``pytest -m "not deployment"`` skips
the module, ``-m "not slow"`` its end-to-end tests; CI runs it. The checks that need no
cluster (the guide's blocks and variables, the overview's quotes, the faster Flower polls) are
in ``tests/test_deployment_guide.py``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.deployment_cluster import (
    ROOT,
    Cluster,
    free_port,
    guide,
    kill_tree,
    messages,
    rows,
    run_lines,
    small_run,
    stop_tree,
    tail,
    write_examples,
)

pytestmark = pytest.mark.deployment

NODES = ("zurich", "basel")  # connected for the whole module
ONE_TASK = "first"  # basel's file holds this one built-in task only (zurich's: parity + first)
SPARE = "geneva"  # registered; used by the CA checks, then joins pinned to DP (guide block
# supernode-pinned: require-dp=true max-epsilon=8.0): refuses the Ferret run, is killed mid-round
REFUSED = "lugano"  # registered, never let in: started only without the CA or with another CA
INTRUDER = "intruder"  # a valid key pair the operator never registered
PLAINTEXT_REFUSED = "Connection attempt failed, retrying"  # a plaintext node at the TLS port
PINNED_LOG = f"supernode-{SPARE}-pinned.log"
# seconds the killed-node test stops the live SuperNodes for: past the 20 s without a heartbeat
# a node had at 10 s heartbeats, inside the 60 s it has at Flower's 30 s (tests/fast_flower)
NODE_STALL = 25.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A SuperLink with TLS and node authentication (guide blocks certs, superlink, connection),
    the keys of four edge machines registered (keys, register), two SuperNodes running; an
    unregistered key and a foreign CA for the refusals."""
    from fedtune.data import synthetic

    t0 = time.monotonic()
    tmp = tmp_path_factory.mktemp("deploy")
    port = free_port()
    c = Cluster(tmp, common={"SUPERLINK_HOST": "127.0.0.1", "PORT": str(port),
                             "SUPERLINK": f"127.0.0.1:{port}", "CERTS": str(tmp / "certs")})
    missing = [cmd for cmd in ("flower-superlink", "flower-supernode", "flwr", "fedtune")
               if shutil.which(cmd, path=c.operator()["PATH"]) is None]
    assert not missing, f"{missing} not found next to {sys.executable} or on PATH: install the " \
                        "project (pip install -e .) in the environment that runs pytest"
    try:
        warm = c.start_warm()  # it imports while the certificates and the SuperLink start
        c.run("certs", c.operator())
        (tmp / "superlink").mkdir()
        link = c.start_superlink(tmp / "superlink.log")
        # while the SuperLink starts: the operator's connection, every edge machine's key, and
        # what the refusals need (an unregistered key, some other CA), each CLI at the same time
        c.run_all([("connection", c.operator()),
                   *[("keys", c.edge(name)[0]) for name in (*NODES, SPARE, REFUSED, INTRUDER)],
                   ("certs", c.operator(CERTS=str(tmp / "foreign-ca")))])
        for pid, name in enumerate((*NODES, SPARE)):
            home = tmp / f"edge-{name}"
            write_examples(home / f"{name}.jsonl", synthetic.make_examples(ONE_TASK, 24, seed=0)
                           if name == "basel" else synthetic.client_examples(pid, 3, 24, seed=0))
        write_examples(tmp / "superlink" / "heldout.jsonl", synthetic.eval_examples(8, seed=0))

        # the operator registers each edge machine's public key (not the intruder's)
        c.register_all([*NODES, SPARE, REFUSED], link, time.monotonic() + 300)
        c.wait_warm(warm)
        for name in NODES:
            c.start_node(name)
        c.timings["fixture"] = time.monotonic() - t0
        yield c
    finally:
        for proc in c.procs:
            stop_tree(proc.pid)
        print("\ndeployment timings (s):", json.dumps(
            {k: round(v, 1) for k, v in c.timings.items()}))




def _check_run(c: Cluster, run_id: int, run_dir: Path, log: str, rounds: int = 2,
               shown: str | None = None) -> list[dict]:
    assert c.status(run_id) == "finished:completed", log + c.logs()
    got = rows(run_dir)
    assert [r["round"] for r in got] == list(range(rounds + 1)), log + c.logs()
    assert f"results in {shown or run_dir}" in log
    assert (run_dir / "summary.json").exists() and (run_dir / "config.json").exists()
    config = json.loads((run_dir / "config.json").read_text())
    assert json.dumps(config).count("heldout.jsonl") == 1  # the server's own held-out file
    assert all(math.isfinite(r["eval_loss"]) for r in got)
    return got


def clients(run_dir: Path) -> dict[int, dict[str, dict]]:
    """``clients.jsonl``: {round: {node name: what its train reply reported}}."""
    path = run_dir / "clients.jsonl"
    out: dict[int, dict[str, dict]] = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        entry = json.loads(line)
        assert entry["node"] not in out.get(entry["round"], {}), f"twice: {entry}"
        out.setdefault(entry["round"], {})[entry["node"]] = entry
    return out


@pytest.mark.slow  # a real SuperLink and SuperNodes (the module's cluster)
def test_fedkseed_learns_evaluates_on_nodes_and_each_node_trains_on_its_file(cluster):
    """FedKSeed through the SuperLink: held-out loss falls by more than a run whose aggregation
    drops or misapplies the seed pairs could (none: no change); every round also sends evaluate
    messages (fraction-evaluate=1) whose loss reaches metrics.jsonl; each node's train replies
    name its own data file (SHA-256) and its tasks, basel's only ``ONE_TASK``."""
    c, t0 = cluster, time.monotonic()
    # a relative output-dir: resolved in the folder the SuperLink was started in (as the guide
    # says), <output-dir>/<algorithm>-<objective>-<time>/
    config = small_run(c.tmp, "fedkseed", algorithm="fedkseed", **{
        "zo-steps": 16, "zo-seeds": 64, "run-dir": "", "output-dir": "relative-runs",
        "fraction-evaluate": 1.0, "min-evaluate-nodes": 2})
    run_id = c.launch(config, "fedkseed")
    log = c.follow(run_id)  # 2-3 min on an idle machine
    found = list((c.tmp / "superlink" / "relative-runs").glob("fedkseed-sft-*"))
    assert len(found) == 1, log + c.logs()
    run_dir = found[0]
    got = _check_run(c, run_id, run_dir, log, shown=f"relative-runs/{run_dir.name}")
    for r in got[1:]:
        assert (r["sampled"], r["clients"], r["dropped"], r["timed_out"]) == (2, 2, 0, 0), r
        assert not r.get("skipped") and 0 < r["bytes_up_per_client"] < 2_000  # seeds + scalars
        assert r["fed_eval_clients"] == 2 and math.isfinite(r["fed_eval_loss"]), r
    # measured 6.174 -> 6.030 -> 5.872 here; 0.2 is two thirds of that fall: a run that
    # applied no pair does not fall at all, one that applied them with the wrong sign rises
    assert got[-1]["eval_loss"] < got[0]["eval_loss"] - 0.2, [r["eval_loss"] for r in got]
    assert got[2]["fed_eval_loss"] < got[1]["fed_eval_loss"]  # on the nodes' own held-out data
    assert (run_dir / "fedkseed-state.npz").exists()
    reports = clients(run_dir)
    tasks = {"zurich": ["first", "parity"], "basel": [ONE_TASK]}
    for rnd in (1, 2):
        assert set(reports.get(rnd, {})) == set(NODES), reports
        for name in NODES:
            report = reports[rnd][name]
            data = (c.tmp / f"edge-{name}" / f"{name}.jsonl").read_bytes()
            assert report["data"]["sha256"] == hashlib.sha256(data).hexdigest(), report
            assert report["data"]["categories"] == tasks[name], report
            assert report["num-examples"] == 22 and math.isfinite(report["train-loss"])  # 24-2
    for name in NODES:  # each node kept its replayed model version in its own cache-dir
        assert any((c.tmp / f"edge-{name}" / "cache").rglob("*")), name
    c.timings["fedkseed"] = time.monotonic() - t0
    c.timings.update({f"fedkseed round {r['round']}": r["seconds"] for r in got})


@pytest.mark.slow  # a real SuperLink and SuperNodes (the module's cluster)
def test_flwr_stop(cluster):
    """``flwr stop`` ends a running run: its status says so and it writes no summary. The run
    waits for more nodes than the cluster has, so it sends no message before the stop: in
    Flower 1.42 a ClientApp that is still pulling its message when its run is stopped retries
    the pull (up to 500 times, for up to 2 h) and outlives the run, which a loaded machine made
    happen here."""
    c, t0 = cluster, time.monotonic()
    run_dir = c.tmp / "runs" / "stopped"
    run_id = c.launch(small_run(c.tmp, "stopped", **{"num-server-rounds": 50,
                                                     "min-available-nodes": 9}), "stopped")
    c.run("stop", c.operator(RUN_ID=str(run_id)))
    assert c.status(run_id) == "finished:stopped"
    time.sleep(2)
    assert not (run_dir / "summary.json").exists()
    c.timings["stop"] = time.monotonic() - t0


def pinned_node(c: Cluster) -> tuple[subprocess.Popen, Path]:
    """The third SuperNode, started with the guide's pins (block supernode-pinned); the Ferret
    test starts it and leaves it running for the killed-node test (one start for both)."""
    log = c.tmp / PINNED_LOG
    node = c.nodes.get(SPARE)
    if node is None or node.poll() is not None:
        node, _ = c.start_node(SPARE, log, block="supernode-pinned")
    return node, log


@pytest.mark.slow  # a real SuperLink and SuperNodes (the module's cluster)
def test_ferret_learns_while_a_node_pinned_to_dp_refuses_the_run(cluster):
    """Ferret through the same apps on real SuperNodes: each message a new ClientApp process
    that catches up from its node's cache-dir; coefficients up, the reconstructed model saved.
    A third SuperNode, started with the guide's pins (``require-dp=true max-epsilon=8.0``),
    refuses this run without DP: its sentence is in the ServerApp's log and its own, it is never
    sampled, and the run goes on with the other two."""
    c, t0 = cluster, time.monotonic()
    _, pinned_log = pinned_node(c)
    before = messages(pinned_log, "Receiving", "train")
    run_dir = c.tmp / "runs" / "ferret"
    run_id = c.launch(small_run(c.tmp, "ferret", algorithm="ferret", **{
        "ferret-seeds": 16, "local-steps": 4, "min-available-nodes": 3}), "ferret")
    log = c.follow(run_id)
    got = _check_run(c, run_id, run_dir, log)
    for r in got[1:]:
        assert (r["sampled"], r["clients"], r["dropped"], r["timed_out"]) == (2, 2, 0, 0), \
            f"{r}\n{log}"
        assert not r.get("skipped") and 0 < r["bytes_up_per_client"] < 5_000  # coefficients
    assert got[-1]["eval_loss"] < got[0]["eval_loss"]  # the nodes' data trained every weight
    assert (run_dir / "model" / "config.json").exists() and (run_dir / "ferret-state.npz").exists()
    why = (f"node '{SPARE}' refuses this run: its pin require-dp=true needs dp='server' or "
           "dp='client', and the run has dp='off'; its pin max-epsilon=8 needs DP with a budget "
           "dp-max-epsilon of at most 8, and the run has dp='off'.")
    assert log.count(f"did not identify itself ({why}); it will not be sampled") == 1, \
        log + c.logs()
    assert f"fedtune: {why}" in pinned_log.read_text(errors="replace"), tail(pinned_log)
    assert messages(pinned_log, "Receiving", "train") == before, tail(pinned_log)
    c.timings["ferret, one node pinned to dp"] = time.monotonic() - t0


@pytest.mark.slow  # a real SuperLink and SuperNodes (the module's cluster)
def test_supernode_killed_mid_round(cluster):
    """SIGKILL one of three SuperNodes while it holds a train message, then stop the other two
    for :data:`NODE_STALL` s (as a loaded machine may): the SuperLink reports
    the lost node (its missed heartbeats: 36-60 s after the kill at Flower's 30 s interval,
    which these tests keep, tests/fast_flower), so round 1 ends
    with the other two replies without waiting for round-timeout, round 2 goes on without it,
    the run finishes. The run has dp='server' with a budget of dp-max-epsilon=8, so the victim,
    pinned to DP as in the Ferret test (``require-dp=true max-epsilon=8.0``, the same
    SuperNode), takes part: its train message is the proof that a run meeting its pins gets it.
    While round 1 waits for the lost node, the refusals of the next test are started: that wait
    is idle. (A run whose node is silent but not lost ends its round at round-timeout:
    tests/test_node_loss.py, tests/test_round_loop.py.)"""
    from fedtune.config import Config

    c, t0 = cluster, time.monotonic()
    # far above the round's real length (the live nodes' replies took 60 s on a 2-core machine
    # at load average 13-17, and CI's machines can be 3x slower): the lost node must be
    # reported by the SuperLink, not found by the timeout
    timeout = 600.0
    run_dir = c.tmp / "runs" / "killed"
    victim, victim_log = pinned_node(c)
    config = small_run(c.tmp, "killed", dp="server", **{
        "min-available-nodes": 3, "round-timeout": timeout, "dp-noise-multiplier": 4.0,
        "dp-max-epsilon": 8.0})
    if "dp-population" in Config.keys():  # a deployed DP run says how many nodes may join
        config["dp-population"] = 3
    run_id = c.launch(config, "killed")
    deadline = time.monotonic() + 600  # bounds a hang; a minute or two when it works
    while not messages(victim_log, "Receiving", "train", run_id):
        assert time.monotonic() < deadline, c.logs() + c.show_log(run_id)
        assert victim.poll() is None, tail(victim_log)
        time.sleep(0.2)
    assert "refuses this run" not in run_lines(victim_log, run_id), tail(victim_log)
    killed = kill_tree(victim.pid, signal.SIGKILL)  # the machine is gone: node, its ClientApp
    t_kill = time.monotonic()
    c.nodes.pop(SPARE)
    psutil.wait_procs(killed, timeout=10)
    # a loaded machine may not run the live SuperNodes for a while: they must not count as
    # lost for it (this wait is inside the lost node's anyway)
    for name in NODES:
        kill_tree(c.nodes[name].pid, signal.SIGSTOP)
    time.sleep(NODE_STALL)
    for name in NODES:
        kill_tree(c.nodes[name].pid, signal.SIGCONT)
    while len(rows(run_dir)) < 2:
        assert time.monotonic() - t_kill < timeout, c.logs() + c.show_log(run_id)
        if "refusals" not in c.pending and all(messages(
                c.tmp / f"supernode-{n}.log", "Sending", "train", run_id) for n in NODES):
            c.pending["refusals"] = start_refusals(c)  # the rest of round 1 is a wait
        time.sleep(0.5)
    round_done = time.monotonic() - t_kill
    log = c.follow(run_id)
    got = _check_run(c, run_id, run_dir, log)
    first, second = got[1], got[2]
    assert (first["sampled"], first["clients"]) == (3, 2) and not first.get("skipped"), first
    # the SuperLink's "Node Unavailable" reply for the victim's message: dropped, not timed out
    assert (first["dropped"], first["timed_out"]) == (1, 0), first
    assert second["clients"] == 2 and not second.get("skipped"), second
    assert re.search(rf"dropped reply from {SPARE}: .*Node Unavailable", log), log
    c.timings.update({"killed run": time.monotonic() - t0, "kill -> round 1 done": round_done,
                      "killed round 1": first["seconds"], "killed round 2": second["seconds"]})
    print("\nkilled-node rounds:", json.dumps(
        [{k: r.get(k) for k in ("round", "sampled", "clients", "dropped", "timed_out",
                                 "skipped", "seconds")} for r in got[1:]]))


def start_refusals(c: Cluster) -> dict[str, tuple[subprocess.Popen, Path]]:
    """Start the SuperNodes the SuperLink must refuse (an unregistered key, a registered key
    without the CA or with another CA, plaintext with and without a key); they run on their
    own, so the killed-node test starts them while its round waits (see the next test)."""
    intruder, home = c.edge(INTRUDER)
    text = guide()["run"]["supernode"]
    without_ca = text.replace('--root-certificates "$CERTS/ca.crt" ', "")
    plaintext = text.replace('--root-certificates "$CERTS/ca.crt" ', "--insecure ")
    anonymous = plaintext.replace('--auth-supernode-private-key "$KEYS/$NAME" ', "")
    assert without_ca != text and text != plaintext != anonymous
    # plaintext (--insecure) to the TLS port: with a registered key Flower itself refuses to
    # start (node auth needs TLS); without a key it talks plaintext to the TLS port
    cases = {"unregistered": (intruder, text),
             "foreign-ca": (c.edge(REFUSED, certs=str(c.tmp / "foreign-ca"))[0], text),
             "no-ca": (c.edge(REFUSED)[0], without_ca),
             "plaintext": (c.edge(REFUSED)[0], plaintext),
             "anonymous": (c.edge(REFUSED)[0], anonymous)}
    started = {}
    for case, (env, block) in cases.items():
        log = c.tmp / f"refused-{case}.log"
        started[case] = (c.start("supernode", env, log, cwd=home, text=block), log)
    return started


@pytest.mark.slow  # a real SuperLink and SuperNodes (the module's cluster)
def test_unregistered_key_and_missing_ca_are_refused(cluster):
    """No SuperNode gets in without a registered key and the CA: each refused process exits
    with Flower's connection error (plaintext with a key: TLS needed), the anonymous plaintext
    one keeps failing, and the registered key never becomes active."""
    c, t0 = cluster, time.monotonic()
    started = c.pending.pop("refusals", None) or start_refusals(c)
    expected = {"unregistered": "Failed to activate SuperNode",
                "foreign-ca": "CERTIFICATE_VERIFY_FAILED", "no-ca": "CERTIFICATE_VERIFY_FAILED"}
    for case, text in expected.items():
        proc, log = started[case]
        try:
            rc = proc.wait(timeout=300)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{case}: the SuperNode is still running, so it was let in\n{tail(log)}")
        out = log.read_text()
        assert rc != 0 and text in out, f"{case}: rc={rc}\n{tail(log)}"
        assert "Exit Code: 305" in out  # SUPERNODE_CONNECTION_ERROR
    plain, plain_log = started["plaintext"]
    rc = plain.wait(timeout=300)
    out = plain_log.read_text(errors="replace")
    assert rc != 0 and "Exit Code: 303" in out, f"rc={rc}\n{tail(plain_log)}"  # TLS needed
    anon, anon_log = started["anonymous"]
    deadline = time.monotonic() + 120  # the cases above took their time: so had this one
    while anon_log.read_text(errors="replace").count(PLAINTEXT_REFUSED) < 2:
        assert time.monotonic() < deadline and anon.poll() is None, tail(anon_log)
        time.sleep(0.5)
    stop_tree(anon.pid)
    out = anon_log.read_text(errors="replace")
    assert "SuperNode ID" not in out and "Receiving" not in out, tail(anon_log)  # never in
    link_log = (c.tmp / "superlink.log").read_text()
    assert "No SuperNode found with the given public key" in link_log
    assert c.node_status(REFUSED) == "registered"  # never activated without the CA
    c.timings["refusals"] = time.monotonic() - t0


def node_id_in(log: Path) -> int | None:
    found = re.findall(r"SuperNode ID: (\d+)", log.read_text(errors="replace"))
    return int(found[-1]) if found else None


@pytest.mark.slow  # a real SuperLink and SuperNodes (the module's cluster)
def test_each_message_ran_in_a_process_of_its_own(cluster):
    """Every reply a SuperNode sent so far came from a ClientApp process of its own, and every
    run had its ServerApp process, each forked from the warm process (tests/warm_apps), and
    each ended; the warm process never imported the app, so no app state passes from one
    message to the next (tests/test_deployment_guide.py checks it refuses once it has)."""
    c = cluster
    if c.warm is None:
        pytest.skip("FEDTUNE_TEST_WARM_APPS=0: Flower's own processes, each a fresh one")
    logs = list(c.tmp.glob("supernode-*.log"))
    received = sum(messages(log, "Receiving") for log in logs)
    # every reply a node sent came from a process of its own; a message may get none (the
    # killed node gone before its process started, a stopped run's message dropped)
    sent = sum(messages(log, "Sending") for log in logs)
    deadline = time.monotonic() + 60  # the last replies' processes are exiting
    while None in (apps := c.warm_launches("flwr-clientapp")).values():
        assert time.monotonic() < deadline, apps
        time.sleep(0.5)
    assert sent > 10 and sent <= len(apps) <= received, (sent, received, apps)
    # each exited 0, but the killed node's: SIGINT from Flower's parent check, its node gone
    assert sum(code != 0 for code in apps.values()) <= 1, apps
    servers = c.warm_launches("flwr-serverapp")
    runs = len(list(c.tmp.glob("run-*.toml")))  # one per c.launch; the stopped one may be
    assert runs - 1 <= len(servers) <= runs, (runs, servers)  # stopped before its ServerApp
    lines = (c.tmp / "warm.log").read_text().splitlines()
    assert len(apps) + len(servers) == sum(x.startswith("launch ") for x in lines)  # no pid twice


@pytest.mark.slow  # a real SuperLink and SuperNodes (the module's cluster)
def test_fedit_survives_restarts_and_resumes(cluster):
    """FedIT, 3 rounds, through restarts (last in the module: it restarts the SuperLink).
    zurich's SuperNode is stopped while it holds its round-1 message: the SuperLink answers
    for the node gone offline ("Node Unavailable"), so round 1 is skipped (one valid reply of
    the two min-train-nodes needs) without waiting for round-timeout. zurich is started again
    with the same key; round 2 waits for it, and it comes back under its node id and is sampled
    again. (Started again at once, it could be back before the ServerApp asks for replies:
    its round-1 message lost, round 1 would wait the whole round-timeout. Stopped after its
    reply instead, it may lose the reply:
    Flower 1.42 answers "Node Unavailable" for an offline node before it looks for the reply
    the node pushed.) After round 2 the SuperLink
    is stopped (its ServerApp dies with it) and started again on its ``--database`` file: the
    SuperNodes reconnect under their ids, nothing registered again, the interrupted run is
    stopped (guide block ``stop``), and ``resume`` (guide block) runs round 3 in the same
    folder, each round once; the adapter learned, was saved."""
    from fedtune.checkpoint import CheckpointError, load_checkpoint

    c, t0 = cluster, time.monotonic()
    if SPARE in c.nodes:  # left running when the killed-node test did not run: two nodes here
        stop_tree(c.nodes.pop(SPARE).pid)
    run_dir = c.tmp / "runs" / "fedit"
    zurich_log = c.tmp / "supernode-zurich.log"
    # far above a round's length, even on a slow machine: nothing here waits for it
    run_id = c.launch(small_run(c.tmp, "fedit", **{"num-server-rounds": 3,
                                                   "round-timeout": 600.0}), "fedit")
    deadline = time.monotonic() + 900  # bounds a hang; 2-3 minutes when it works
    while not messages(zurich_log, "Receiving", "train", run_id):  # zurich holds round 1's
        assert time.monotonic() < deadline, c.logs()
        time.sleep(0.2)
    stop_tree(c.nodes["zurich"].pid)
    while len(rows(run_dir)) < 2:  # round 1 ends: basel's reply, the SuperLink's for zurich
        assert time.monotonic() < deadline, c.logs()
        time.sleep(0.2)
    restarted_log = c.tmp / "supernode-zurich-restarted.log"
    c.start_node("zurich", restarted_log)

    def checkpointed() -> int:
        try:
            return load_checkpoint(run_dir).round
        except CheckpointError:
            return -1

    while checkpointed() < 2:
        assert time.monotonic() < deadline, c.logs()
        assert c.link is not None and c.link.poll() is None, c.logs()
        time.sleep(0.2)
    node_logs = {"zurich": restarted_log, "basel": c.tmp / "supernode-basel.log"}

    def reconnects(name: str) -> int:  # a SuperNode logs this once its retries get through
        return node_logs[name].read_text(errors="replace").count("Connection successful")

    before = {name: reconnects(name) for name in NODES}
    t_restart = time.monotonic()
    stop_tree(c.link.pid)  # the SuperLink and the run's ServerApp
    assert node_id_in(restarted_log) == c.node_ids["zurich"], tail(restarted_log)
    assert [r["round"] for r in rows(run_dir)] == [0, 1, 2], c.logs()
    assert not (run_dir / "summary.json").exists()
    c.start_superlink(c.tmp / "superlink-restarted.log")
    # the nodes back first. A run resumed at once, while they reconnect, may find a node
    # listed (as the SuperLink's database last saw it) whose identify message then comes back
    # as an error: that node is not sampled in the round, here the last (twice in four runs of
    # this test alone on a quiet machine)
    while not all(reconnects(name) > before[name] for name in NODES):
        assert time.monotonic() - t_restart < 600 and c.link.poll() is None, c.logs()
        time.sleep(0.5)
    while not all(re.search(rf"{c.node_ids[n]}.*online", c.run(
            "nodes", c.operator(), check=False).stdout) for n in NODES):  # no new registration
        assert time.monotonic() - t_restart < 600, c.logs()
        time.sleep(1)
    c.timings["superlink restart -> nodes online"] = time.monotonic() - t_restart
    # the SuperLink's database still lists the interrupted run as running, and each node is
    # pulling a round-3 message of it whose contents its dead ServerApp had not all pushed.
    # Stopped (as the guide says), the run's messages are dropped at once; otherwise each
    # node waits until the SuperLink gives the run up (56 s after the restart here) before
    # it takes the resumed run's first message: round 3 took 75-85 s instead of about 25
    if c.status(run_id) == "running":  # a slow machine's SuperLink may have given it up,
        # even between the status and the stop: then Flower answers "Run is already finished"
        stop = c.run("stop", c.operator(RUN_ID=str(run_id)), check=False)
        assert stop.returncode == 0 or "already finished" in stop.stdout + stop.stderr, stop
    assert c.status(run_id).startswith("finished:"), c.logs()
    resume_env = c.operator(RUN_CONFIG=str(c.tmp / "run-fedit.toml"), RUN_DIR=str(run_dir))
    out = c.run("resume", resume_env, cwd=ROOT)
    found = re.search(r"Successfully started run (\d+)", out.stdout + out.stderr)
    assert found, f"{out.stdout}\n{out.stderr}"
    resumed = int(found.group(1))
    log = c.follow(resumed)
    assert c.status(resumed) == "finished:completed", log + c.logs()
    assert f"resuming {run_dir} after round 2" in log, log
    got = rows(run_dir)
    assert [r["round"] for r in got] == [0, 1, 2, 3], log + c.logs()
    assert (run_dir / "summary.json").exists()
    assert all(math.isfinite(r["eval_loss"]) for r in got)
    first = got[1]
    assert first.get("skipped") and (first["sampled"], first["clients"]) == (2, 1), first
    assert (first["dropped"], first["timed_out"]) == (1, 0), first  # zurich: Node Unavailable
    for r in got[2:]:
        assert (r["sampled"], r["clients"], r["dropped"], r["timed_out"]) == (2, 2, 0, 0), r
        assert not r.get("skipped") and r["bytes_up_per_client"] > 100_000  # a 16-bit adapter
    assert sorted(clients(run_dir)) == [2, 3]  # each round's replies once, resume included
    for rnd, by_node in clients(run_dir).items():
        assert set(by_node) == set(NODES), (rnd, by_node)  # zurich again after its restart
    assert got[-1]["eval_loss"] < got[0]["eval_loss"]  # the nodes' data trained the adapter
    adapter = run_dir / "adapter"
    assert (adapter / "adapter_config.json").exists()
    assert any(adapter.glob("adapter_model.*"))
    c.timings["fedit restarts"] = time.monotonic() - t0
    c.timings.update({f"fedit round {r['round']}": r["seconds"] for r in got})
