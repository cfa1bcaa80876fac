"""Only the consortium's app runs on the edge (docs/deployment.md, section 7).

Unit tests: signatures made by ``fedtune.deploy.signing`` and checked by Flower's own SuperNode
check (``_verify_fab``), and the registry answering Flower's own ``request_download_link``.

End to end, through the guide's blocks as in ``tests/test_deployment.py`` (whose helpers this
module imports): a real SuperLink (TLS, SuperNode authentication) whose
``FLWR_SUPERGRID_API_URL`` points at a real ``fedtune registry``, two real SuperNodes with
``--trusted-entities``. The signed app trains one round; the same app with one byte changed
(served with the approved signature) and an unsigned ``flwr run .`` are refused by both nodes.
One SuperLink, one registry and two SuperNodes serve the whole module.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.deployment_cluster import (
    ROOT,
    Cluster,
    free_port,
    guide,
    rows,
    run_lines,
    small_run,
    stop_tree,
    write_examples,
)

pytestmark = pytest.mark.deployment

NODES = ("zurich", "basel")
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
APP_ID = "@fedtune/fedtune"
CLIENT_FILE = "client_app/app.py"  # the file whose one byte the modified app changes


def _tiny_app(folder: Path, body: str = "app = None\n") -> Path:
    """A minimal Flower app folder (pyproject + two modules) for the unit tests."""
    (folder / "tinyapp").mkdir(parents=True, exist_ok=True)
    (folder / "pyproject.toml").write_text(
        '[project]\nname = "tinyapp"\nversion = "1.0.0"\n\n[tool.flwr.app]\n'
        'publisher = "consortium"\n\n[tool.flwr.app.components]\n'
        'serverapp = "tinyapp.server:app"\nclientapp = "tinyapp.client:app"\n\n'
        '[tool.flwr.app.config]\nx = 1\n')
    (folder / "tinyapp" / "__init__.py").write_text("")
    (folder / "tinyapp" / "server.py").write_text("app = None\n")
    (folder / "tinyapp" / "client.py").write_text(body)
    return folder


def _flip_one_byte(path: Path) -> None:
    """Change one byte of a source file (in its module docstring: still valid Python)."""
    data = bytearray(path.read_bytes())
    at = data.index(b"one handler")
    data[at] = ord("O")
    path.write_bytes(bytes(data))


# ---- unit: signatures and Flower's own check ------------------------------------------------


@pytest.fixture(scope="module")
def signed_tiny(tmp_path_factory):
    """A tiny app's FAB, built by Flower's build code and signed by a fresh consortium key."""
    from fedtune.deploy import signing

    tmp = tmp_path_factory.mktemp("signing")
    paths = signing.make_signing_key(tmp / "keys", "consortium")
    key, kid = signing.load_signing_key(paths["private"])
    fab = signing.build_fab(_tiny_app(tmp / "app"))
    return {"tmp": tmp, "paths": paths, "key": key, "kid": kid, "fab": fab,
            "records": [signing.sign_fab(fab, key, kid)],
            "trusted": signing.read_trusted(paths["trusted"])}


def test_keys_are_what_the_supernode_reads(signed_tiny):
    from flwr.supernode.cli.flower_supernode import (
        _try_obtain_trusted_entities,
        _validate_public_keys_ed25519,
    )

    paths = signed_tiny["paths"]
    assert paths["private"].stat().st_mode & 0o777 == 0o600
    assert paths["private"].read_bytes().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    trusted = _try_obtain_trusted_entities(paths["trusted"])  # the SuperNode's own parser
    _validate_public_keys_ed25519(trusted)  # exits the process if a key is not ed25519
    algorithm, key, comment = paths["public"].read_text().split()
    assert trusted == {signed_tiny["kid"]: f"{algorithm} {key}"} and comment == signed_tiny["kid"]


def test_signature_round_trip_with_flowers_verify_fab(signed_tiny):
    from fedtune.deploy import signing

    s = signed_tiny
    fab, records, trusted = s["fab"], s["records"], s["trusted"]
    assert signing.verify_fab(fab, records, trusted)
    # the app with one byte of its code changed, rebuilt, with the approved signature
    tampered_dir = _tiny_app(s["tmp"] / "tampered", body="app = Nonf\n")
    tampered = signing.build_fab(tampered_dir)
    assert tampered != fab and not signing.verify_fab(tampered, records, trusted)
    # the same bytes, one flipped in the zip itself
    flipped = bytearray(fab)
    flipped[len(flipped) // 2] ^= 1
    assert not signing.verify_fab(bytes(flipped), records, trusted)
    # signed by another key that claims the trusted key's id
    other = signing.make_signing_key(s["tmp"] / "other", "consortium")
    other_key, _ = signing.load_signing_key(other["private"])
    forged = [signing.sign_fab(fab, other_key, s["kid"])]
    assert not signing.verify_fab(fab, forged, trusted)
    # signed by a key the node does not know (its own id)
    unknown = [signing.sign_fab(fab, *signing.load_signing_key(other["private"]))]
    assert not signing.verify_fab(fab, unknown, trusted)
    # no signature at all; a signature over another signing time
    assert not signing.verify_fab(fab, [], trusted)
    late = [{**records[0], "signed_at": records[0]["signed_at"] + 1}]
    assert not signing.verify_fab(fab, late, trusted)
    # one trusted signature among untrusted ones is enough (several signers)
    assert signing.verify_fab(fab, unknown + records, trusted)


def test_build_is_flowers_own(signed_tiny, tmp_path, monkeypatch):
    """The FAB fedtune signs is byte for byte the one ``flwr build`` writes (its command's
    own function, in this process)."""
    import hashlib

    from flwr.cli.build import build

    app = _tiny_app(tmp_path / "tinyapp")
    monkeypatch.chdir(tmp_path)
    build(app=app)
    (built,) = tmp_path.glob("*.fab")
    assert built.read_bytes() == signed_tiny["fab"]
    assert hashlib.sha256(built.read_bytes()).hexdigest()[:8] in built.name


def test_registry_answers_flowers_request(signed_tiny):
    import requests
    from flwr.supercore.utils import request_download_link

    from fedtune.deploy import signing
    from fedtune.deploy.registry import RegistryServer

    s = signed_tiny
    apps = s["tmp"] / "apps"
    signing.write_signed_app(s["fab"], s["records"], apps)
    server = RegistryServer(apps, port=0)
    server.start()
    try:
        url = f"{server.url}/hub/fetch-fab"
        for version in ("1.0.0", None):  # None: the latest version
            fab_url, verifications, _ = request_download_link(
                "@consortium/tinyapp", version, url, "fab_url")
            assert verifications == s["records"]
            got = requests.get(fab_url, timeout=10)
            assert got.status_code == 200 and got.content == s["fab"]
        with pytest.raises(ValueError, match="Available app versions .*: 1.0.0"):
            request_download_link("@consortium/tinyapp", "2.0.0", url, "fab_url")
        with pytest.raises(ValueError, match="not found"):
            request_download_link("@someone/else", None, url, "fab_url")
        for path in ("/fab/../keys/consortium", "/fab/x.fab", "/hub/fetch-fab"):
            assert requests.get(server.url + path, timeout=10).status_code == 404
    finally:
        server.shutdown()
        server.server_close()


def test_cli_user_errors_are_one_sentence(tmp_path, capsys):
    from fedtune.cli import main

    cases = [["sign", "--key", str(tmp_path / "none"), "--out", str(tmp_path / "apps")],
             ["sign", "--key", str(tmp_path / "keys" / "consortium"), "--app",
              str(tmp_path), "--out", str(tmp_path / "apps")],
             ["registry", "--apps", str(tmp_path / "missing")],
             ["signing-key", "--out", str(tmp_path / "keys")]]
    assert main(["signing-key", "--out", str(tmp_path / "keys")]) == 0
    capsys.readouterr()
    for argv in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("fedtune: ") and "\n" not in err and "Traceback" not in err, err


# ---- end to end: a SuperLink, the registry, two SuperNodes with --trusted-entities ----------


def _copy_app(dest: Path) -> Path:
    """A checkout-like copy of the app: the files git tracks or would track (what ``flwr run``
    ships), without the ignored folders (virtual environments, runs)."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


@pytest.fixture(scope="module")
def signed(tmp_path_factory):
    """The guide's section 7 on 127.0.0.1: signing key, signed app, registry, SuperLink
    (sections 1 and 7), two SuperNodes with --trusted-entities; yields (the Cluster, the
    signed checkout, what `fedtune sign` printed)."""
    from fedtune.data import synthetic

    t0 = time.monotonic()
    tmp = tmp_path_factory.mktemp("signed-deploy")
    port = free_port()
    c = Cluster(tmp, common={"SUPERLINK_HOST": "127.0.0.1", "PORT": str(port),
                             "SUPERLINK": f"127.0.0.1:{port}", "CERTS": str(tmp / "certs"),
                             "SIGNING": str(tmp / "signing"), "APPS": str(tmp / "apps"),
                             "REGISTRY_PORT": str(free_port())})
    app = _copy_app(tmp / "checkout" / "fedtune")
    blocks = guide()["run"]
    try:
        c.run("certs", c.operator())
        (tmp / "superlink").mkdir()  # the SuperLink starts while the consortium signs
        link_env = c.env("superlink-flwr-home", STATE=str(tmp / "superlink" / "state"))
        link = c.start("superlink", link_env, tmp / "superlink.log", cwd=tmp / "superlink",
                       text=blocks["registry-url"] + "\n" + blocks["superlink"])
        # the consortium's key, the operator's connection and each edge machine's key: separate
        # machines, so their CLI blocks run at the same time
        c.run_all([("signing-key", c.operator()), ("connection", c.operator()),
                   *[("keys", c.edge(name)[0]) for name in NODES]])
        shutil.copy(tmp / "signing" / "trusted-entities.yaml", tmp / "certs")  # to each edge
        with ThreadPoolExecutor(1) as pool:  # the operator registers while the app is signed
            registered = pool.submit(c.register_all, list(NODES), link, time.monotonic() + 300)
            signed = c.run("sign", c.operator(), cwd=app).stdout
            registered.result()
        c.start("registry", c.operator(), tmp / "registry.log", cwd=tmp)
        for pid, name in enumerate(NODES):
            write_examples(tmp / f"edge-{name}" / f"{name}.jsonl",
                           synthetic.client_examples(pid, 2, 24, seed=0))
        write_examples(tmp / "superlink" / "heldout.jsonl", synthetic.eval_examples(8, seed=0))
        for name in NODES:
            env, home = c.edge(name)
            c.start("supernode-trusted", env, tmp / f"supernode-{name}.log", cwd=home)
        c.timings["fixture"] = time.monotonic() - t0
        yield c, app, signed
    finally:
        for proc in c.procs:
            stop_tree(proc.pid)
        print("\nsigned deployment timings (s):", json.dumps(
            {k: round(v, 1) for k, v in c.timings.items()}))


def _launch(c: Cluster, block: str, tag: str, cwd: Path, text: str | None = None,
            **overrides) -> int:
    path = c.tmp / f"run-{tag}.toml"
    config = small_run(c.tmp, tag, **{"num-server-rounds": 1, "local-steps": 1,
                                      "round-timeout": 300.0, **overrides})
    path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in config.items()))
    out = c.run(block, c.operator(RUN_CONFIG=str(path)), cwd=cwd, text=text)
    found = re.search(r"Successfully started run (\d+)", out.stdout + out.stderr)
    assert found, f"no run id in:\n{out.stdout}\n{out.stderr}"
    return int(found.group(1))


def _node_lines(c: Cluster, name: str, run_id: int) -> str:
    """The lines of node ``name``'s log from its messages of run ``run_id``."""
    return run_lines(c.tmp / f"supernode-{name}.log", run_id)


def _wait_nodes(c: Cluster, run_id: int, line: str, timeout: float = 300) -> None:
    """Until every node's log of run ``run_id`` holds ``line``."""
    deadline = time.monotonic() + timeout
    while not all(line in _node_lines(c, name, run_id) for name in NODES):
        assert time.monotonic() < deadline, f"no '{line}' for run {run_id}:\n{c.logs()}"
        time.sleep(0.5)


def _statuses(c: Cluster, runs: dict[str, int]) -> dict[str, str]:
    """Each run's status column, from one ``flwr ls`` (guide block 'list')."""
    listed = c.run("list", c.operator()).stdout.splitlines()
    status = {}
    for tag, run_id in runs.items():
        row = next((line for line in listed if str(run_id) in line), "")
        found = re.search(r"(finished:\w+|running|starting|pending)", row)
        status[tag] = found.group(1) if found else f"not listed: {listed}"
    return status


def test_guide_launches_the_signed_version():
    block = guide()["run"]["launch-approved"]
    assert f"flwr run {APP_ID}=={VERSION} fedtune" in block, (
        f"the guide's launch-approved block must name this checkout's version {VERSION}")


@pytest.mark.slow  # a SuperLink, the registry, two SuperNodes, three runs
def test_approved_app_trains_others_are_refused(signed):
    """The signed app trains on both nodes; the modified one (one byte, approved signature)
    and the unsigned ``flwr run .`` are refused by both, none of their code runs there."""
    from fedtune.deploy import signing

    (c, app, printed), t0 = signed, time.monotonic()
    assert f"signed {APP_ID}=={VERSION}" in printed
    apps = c.tmp / "apps"
    (record_path,) = apps.glob("*.fab.json")
    approved = json.loads(record_path.read_text())
    # an attacker's version 0.1.x+1: the approved app with one byte of client code changed,
    # rebuilt, served by the registry with the approved signature
    tampered_dir = c.tmp / "tampered" / "fedtune"
    shutil.copytree(app, tampered_dir)
    _flip_one_byte(tampered_dir / CLIENT_FILE)
    fab = signing.build_fab(tampered_dir)
    bad_version = ".".join([*VERSION.split(".")[:2], str(int(VERSION.split(".")[2]) + 1)])
    ident = {**signing.fab_identity(fab), "version": bad_version}
    (apps / ident["file"]).write_bytes(fab)
    (apps / f"{ident['file']}.json").write_text(json.dumps(
        {**ident, "verifications": approved["verifications"]}))
    tampered_block = guide()["run"]["launch-approved"].replace(f"=={VERSION}",
                                                               f"=={bad_version}")

    # One ServerApp starts at a time (a slow start loses its task token on a busy machine).
    # The unsigned run ships the very bytes the consortium signed, launched after the nodes
    # took the approved run (the SuperLink keeps one verification record per FAB hash).
    runs = {"approved": _launch(c, "launch-approved", "approved", cwd=c.tmp)}
    _wait_nodes(c, runs["approved"], "Sending: query.identify")
    runs["unsigned"] = _launch(c, "launch", "unsigned", cwd=app)
    _wait_nodes(c, runs["unsigned"], "App verification is not supported")
    runs["tampered"] = _launch(c, "launch-approved", "tampered", cwd=c.tmp, text=tampered_block)
    logs = {tag: c.follow(run_id) for tag, run_id in runs.items()}
    c.timings["three runs"] = time.monotonic() - t0
    status = _statuses(c, runs)

    # approved: both nodes trained, no refusal
    assert status["approved"] == "finished:completed", logs["approved"] + c.logs()
    got = rows(c.tmp / "runs" / "approved")
    assert [r["round"] for r in got] == [0, 1], logs["approved"] + c.logs()
    assert (got[1]["sampled"], got[1]["clients"], got[1]["dropped"]) == (2, 2, 0), got[1]
    for name in NODES:
        lines = _node_lines(c, name, runs["approved"])
        assert "Receiving: train message" in lines, lines
        assert "could not be verified" not in lines and "verification failed" not in lines

    expected = {"tampered": "FAB verification failed: the provided trusted entities could "
                            "not verify the FAB",
                "unsigned": "App verification is not supported by the connected SuperLink"}
    for tag, message in expected.items():
        run_dir = c.tmp / "runs" / tag
        got = rows(run_dir)
        assert got and got[-1]["round"] == 1, logs[tag] + c.logs()
        assert status[tag] == "finished:completed", logs[tag]
        assert (got[1]["sampled"], got[1]["clients"]) == (0, 0) and got[1]["skipped"], got[1]
        assert logs[tag].count("did not identify itself (The FAB could not be verified.)") \
            == len(NODES), logs[tag]
        for name in NODES:
            lines = _node_lines(c, name, runs[tag])
            assert message in lines, f"{tag} on {name}:\n{lines}"
            assert "Receiving: train" not in lines, lines  # never sampled
            assert "Start `flwr-clientapp` process" not in lines, lines  # nothing of it ran
    # the nodes installed the approved app only; the SuperLink ran every app's ServerApp
    # (docs: what this does not protect)
    def installed(flwr_home: str) -> set[str]:  # Flower unpacks each FAB it runs here
        return {p.name for p in (c.tmp / flwr_home / "apps").iterdir()}

    folder = {tag: f"fedtune.fedtune.{VERSION}.{digest[:8]}"
              for tag, digest in (("approved", approved["sha256"]), ("tampered", ident["sha256"]))}
    for name in NODES:
        assert installed(f"edge-{name}/flwr-home") == {folder["approved"]}, name
    assert set(folder.values()) <= installed("superlink-flwr-home")
    registry_log = (c.tmp / "registry.log").read_text()
    assert f"{APP_ID}=={VERSION}" in registry_log and f"{APP_ID}=={bad_version}" in registry_log
