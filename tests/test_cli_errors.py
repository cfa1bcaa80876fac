"""User errors are one sentence (issue #18, item 1): `fedtune simulate` opens the data, the
model and the config before Ray starts (exit 2, no traceback; ``--debug`` shows it); a ClientApp's
user error reaches the log as its sentence; a run whose every round was skipped exits 1 and
says why."""

from __future__ import annotations

import importlib
import json
import logging
import os
import subprocess
import sys

import pytest

# The real CLI (`fedtune = fedtune.cli:main`), reporting at exit whether Ray was ever imported:
# a preflight refusal must come before the simulation engine is even loaded.
CLI = ("import atexit, sys\n"
       "atexit.register(lambda: print('ray imported:', 'ray' in sys.modules))\n"
       "from fedtune.cli import main\n"
       "sys.exit(main(sys.argv[1:]))\n")


def _fedtune(tmp_path, *argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "FLWR_TELEMETRY_ENABLED": "0"}
    return subprocess.run([sys.executable, "-c", CLI, "simulate", "--output-dir",
                           str(tmp_path / "runs"), *argv], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=300)


def _malformed(tmp_path) -> str:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": [1]}\n')
    return str(path)


def _one_record(tmp_path) -> str:
    path = tmp_path / "one.jsonl"
    path.write_text('{"instruction": "Say hi", "input": "", "output": "hi"}\n')
    return str(path)


CASES = {
    "malformed-file": (lambda p: ["--data", _malformed(p)],
                       "{p}/bad.jsonl: line 2: field 'output' is a list, not text; give it a "
                       "string value."),
    "missing-model": (lambda p: ["--model", "/nonexistent"],
                      "Model folder '/nonexistent' does not exist; fix the path, or pass 'tiny' "
                      "or a Hugging Face hub id (owner/name)."),
    # today: every record to the server's held-out set, ~30 tracebacks from Ray actors, exit 0
    "one-record": (lambda p: ["--data", _one_record(p)],
                   "{p}/one.jsonl: all of its examples went to the server's held-out set (it "
                   "has 1, eval-examples=96), none to the 8 clients; give at least 112 examples "
                   "(96 held out + 2 per client) or give eval-data."),
    "negative-rounds": (lambda p: ["--rounds", "-3"], "num-server-rounds=-3 must be at least 1."),
    "zero-clients": (lambda p: ["--num-clients", "0"], "--num-clients=0 must be at least 1."),
    # issue #26: accepted and silently ignored before the compatibility table
    "another-algorithms-key": (lambda p: ["--run-config", "seeds-server-momentum=0.5"],
                               "seeds-server-momentum is read by fedkseed, fedkseed-pro, ferret "
                               "only, not by algorithm='fedit', which would ignore it; drop "
                               "seeds-server-momentum or use one of those algorithms."),
}


# Every case in ONE child process (a child pays Python's and torch's start-up): each case's exit
# code, stderr and stdout as the command gives them, and whether Ray had been imported by then.
BATCH = ("import contextlib, io, json, sys\n"
         "from fedtune.cli import main\n"
         "done = {}\n"
         "for name, argv in json.loads(sys.argv[1]).items():\n"
         "    out, err = io.StringIO(), io.StringIO()\n"
         "    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):\n"
         "        code = main(argv)\n"
         "    done[name] = [code, err.getvalue(), out.getvalue(), 'ray' in sys.modules]\n"
         "print(json.dumps(done))\n")


@pytest.fixture(scope="module")
def refused(tmp_path_factory) -> dict[str, tuple]:
    """case -> (its folder, exit code, stderr, stdout, Ray imported), every case in one child."""
    folders = {case: tmp_path_factory.mktemp(case) for case in CASES}
    argvs = {case: ["simulate", "--output-dir", str(folders[case] / "runs"),
                    *CASES[case][0](folders[case])] for case in CASES}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "FLWR_TELEMETRY_ENABLED": "0"}
    done = subprocess.run([sys.executable, "-c", BATCH, json.dumps(argvs)], capture_output=True,
                          text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr == ""  # nothing past the redirected streams (a logger's own handle)
    results = json.loads(done.stdout.splitlines()[-1])
    return {case: (folders[case], *results[case]) for case in CASES}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_user_error_is_one_sentence_and_exit_2_before_ray_starts(case, refused):
    folder, code, stderr, stdout, ray_imported = refused[case]
    assert code == 2, stderr
    assert stderr == f"fedtune: {CASES[case][1].format(p=folder)}\n"  # that line, nothing else
    assert "Traceback" not in stdout and stdout.strip() == ""
    assert not ray_imported
    assert not (folder / "runs").exists()  # no run folder either


def test_debug_shows_the_traceback_and_keeps_exit_2(tmp_path):
    done = _fedtune(tmp_path, "--data", _malformed(tmp_path), "--debug")
    assert done.returncode == 2
    assert "Traceback (most recent call last)" in done.stderr
    assert done.stderr.endswith("fedtune: " + CASES["malformed-file"][1].format(p=tmp_path)
                                + "\n")


# ---- the same error raised inside a ClientApp (deployment, or data a client reads itself) ----
RAY_TEXT = """\x1b[36mray::ClientAppActor.run()\x1b[39m (pid=3582, ip=192.0.2.2)
  File "/work/main/fedtune/data/split.py", line 111, in _pool
    raise DataFileError(f"{cfg.data}: all of its {records.name} went to the server's "
fedtune.data.readers.DataFileError: d.jsonl: all of its examples went to the server's held-out set.

The above exception was the direct cause of the following exception:

  File "/work/venv/lib/python3.11/site-packages/flwr/simulation/ray_transport/ray_actor.py", line 65
    raise ClientAppException(str(ex)) from ex
flwr.clientapp.client_app.ClientAppException:
Exception ClientAppException occurred. Message: d.jsonl: all of its examples went to the server's \
held-out set."""
SENTENCE = "d.jsonl: all of its examples went to the server's held-out set."


@pytest.fixture
def flwr_log():
    """Flower's logger as the simulation engine uses it, with fedtune's filter, captured."""
    from fedtune.logs import one_sentence_errors

    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    logger = logging.getLogger("flwr")
    handler, before = Keep(), list(logger.filters)
    logger.addHandler(handler)
    one_sentence_errors()
    yield logger, records
    logger.removeHandler(handler)
    logger.filters[:] = before


def test_a_clientapps_user_error_is_logged_once_as_its_sentence(flwr_log, monkeypatch):
    """Flower's engine logs, per failed message, a preamble, the exception and its traceback
    (vce_api.worker, RayBackend.process_message): 8 clients gave ~30 tracebacks."""
    from fedtune.errors import ConfigError
    from fedtune.logs import DEBUG_ENV, user_error

    monkeypatch.delenv(DEBUG_ENV, raising=False)
    logger, records = flwr_log
    for _ in range(3):  # three clients, the same error
        logger.error("An exception was raised when processing a message by %s", "RayBackend")
        logger.error(RAY_TEXT)
        logger.error("Traceback (most recent call last):\n" + RAY_TEXT)
    logger.error("Traceback (most recent call last):\nRuntimeError: CUDA out of memory")
    assert records == [f"fedtune: {SENTENCE}",
                       "Traceback (most recent call last):\nRuntimeError: CUDA out of memory"]
    # the reply's reason as the round loop logs it ("dropped reply from client-0003: ...")
    assert user_error(f"<class 'ray.exceptions.RayTaskError'>:<'{RAY_TEXT}'>") == SENTENCE
    assert user_error("fedtune.algorithms.fedit.merged.BaseOutOfSync: base differs") is None
    # a deployed ClientApp's reply (flwr.supernode.runtime.run_clientapp), a deployed ServerApp
    assert user_error(f"<class 'fedtune.data.readers.DataFileError'>:<'{SENTENCE}'>") == SENTENCE
    try:
        raise ConfigError("lr=-1 must be positive.")
    except ConfigError as err:
        logger.error("%s raised an exception", "ServerApp", exc_info=err)
    assert records[-1] == "fedtune: lr=-1 must be positive."
    monkeypatch.setenv(DEBUG_ENV, "1")  # --debug: everything passes
    logger.error(RAY_TEXT)
    assert records[-1] == RAY_TEXT


# ---- a run whose rounds are skipped (the CLI's path, the engine replaced by an in-process one)
SMALL = ("local-steps=1 examples-per-client=8 eval-examples=4 client-eval-examples=2 "
         "max-new-tokens=1 fraction-train=1.0 fraction-evaluate=0.0 batch-size=2")


def _simulate(monkeypatch, tmp_path, rounds: int, poisoned_rounds: set[int]) -> int:
    """``fedtune simulate`` with 2 clients whose train replies carry NaN in ``poisoned_rounds``
    (the round loop drops them as non-finite); the ServerApp and ClientApps are the real ones,
    on an in-process Grid instead of Ray."""
    from client_app.app import app as client_app
    from fedtune.cli import main
    from server_app.app import main as server_main
    from tests.inprocess_grid import InProcessGrid, poison_first_array

    def poison(node_id, reply):
        if reply.metadata.message_type != "train" or reply.has_error():
            return reply
        return poison_first_array(reply) if trains.pop(0) in poisoned_rounds else reply

    trains = [r for r in range(1, rounds + 1) for _ in range(2)]  # 2 train replies a round

    def in_process(*, num_supernodes, server_app_context, **_):
        grid = InProcessGrid(client_app, num_supernodes, dict(server_app_context.run_config),
                             tamper=poison)
        server_main(grid, server_app_context)

    engine = importlib.import_module("flwr.simulation.run_simulation")  # flwr.simulation's
    monkeypatch.setattr(engine, "_run_simulation", in_process)  # run_simulation is a function
    return main(["simulate", "--num-clients", "2", "--rounds", str(rounds), "--output-dir",
                 str(tmp_path), "--run-config", SMALL])


def test_a_run_whose_every_round_was_skipped_exits_1_and_says_why(monkeypatch, tmp_path,
                                                                   capsys):
    assert _simulate(monkeypatch, tmp_path, 1, {1}) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("fedtune: every round (1 of 1) was skipped, so the model never "
                              "trained (round 1: 0 valid replies of 2, 2 needed "
                              "(min-train-nodes); 2 dropped, e.g. client-0000: ")
    assert "NaN" in err[-1] and err[-1].endswith(").")
    summary = json.loads(next(tmp_path.glob("*/summary.json")).read_text())
    assert summary["rounds_run"] == 1 and summary["skipped_rounds"] == [1]


def test_a_run_with_some_skipped_rounds_exits_0_and_counts_them(monkeypatch, tmp_path, capsys):
    assert _simulate(monkeypatch, tmp_path, 2, {1}) == 0
    out = capsys.readouterr()
    assert "fedtune: 1 of 2 rounds were skipped (rounds 1; first round 1: 0 valid replies of " \
           "2" in out.out
    assert "skipped" not in out.err
    rows = [json.loads(line) for line in
            next(tmp_path.glob("*/metrics.jsonl")).read_text().splitlines()]
    assert [r.get("skipped", False) for r in rows] == [False, True, False]
    assert "skip_reason" not in rows[2]  # a trained round's row is as it always was


def test_the_default_run_reaches_the_engine_without_importing_torch(tmp_path):
    """The checks of the built-in model (its tokenizer, its LoRA targets) and the GPU probe of
    a machine without an NVIDIA driver import no torch: the engine starts about 4 s sooner
    (the server and the actors import it while Ray starts; see simulations/bench_startup).
    The engine builds fedtune's Ray backend (``fedtune/flower/ray_backend.py``), and Flower's
    is back in place once the run is over."""
    code = ("import sys\n"
            "import flwr.simulation.run_simulation\n"
            "from flwr.server.superlink.fleet.vce.backend import raybackend\n"
            "engine = sys.modules['flwr.simulation.run_simulation']\n"
            "def started(**kwargs):\n"
            "    print(raybackend.RayBackend.__module__)\n"
            "    print('torch' in sys.modules, kwargs['backend_config']['client_resources'])\n"
            "engine._run_simulation = started\n"
            "from fedtune.cli import main\n"
            f"main(['simulate', '--output-dir', {str(tmp_path / 'runs')!r}])\n"
            "print(raybackend.RayBackend.__module__)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0"})
    during, started, after = done.stdout.strip().splitlines()[-3:]
    torch_imported, resources = started.split(" ", 1)
    gpu_driver = any(os.path.exists(p) for p in ("/proc/driver/nvidia", "/dev/dxg"))
    assert torch_imported == str(gpu_driver), done.stderr[-2000:]
    assert "'num_gpus': 0.0" in resources or gpu_driver
    assert (during, after) == ("fedtune.flower.ray_backend",
                               "flwr.server.superlink.fleet.vce.backend.raybackend")


def test_loading_an_app_leaves_a_half_imported_transformers_alone(monkeypatch):
    """The simulation engine loads the ClientApp (its module calls quiet_third_party) while
    the ServerApp's thread may still be importing transformers: reaching into the half-built
    module raised a circular-import error once. Such a module is left alone."""
    import importlib.machinery
    import types

    from fedtune.logs import quiet_third_party

    half = types.ModuleType("transformers")
    half.__spec__ = importlib.machinery.ModuleSpec("transformers", None, is_package=True)
    half.__spec__._initializing = True  # what importlib sets while the module runs
    monkeypatch.setitem(sys.modules, "transformers", half)
    quiet_third_party()  # no import from the half-built module


def test_the_command_exits_with_mains_code_and_all_its_output():
    """``fedtune`` ends with os._exit after the exit handlers (no module teardown): what main
    printed into a pipe still arrives, and the exit code is main's."""
    from fedtune.config import Config

    listed = subprocess.run([sys.executable, "-m", "fedtune.cli", "config"],
                            capture_output=True, text=True, timeout=300)
    assert listed.returncode == 0 and len(listed.stdout.splitlines()) == len(Config().to_flat())
    refused = subprocess.run([sys.executable, "-m", "fedtune.cli", "simulate", "--num-clients",
                              "0"], capture_output=True, text=True, timeout=300)
    assert (refused.returncode, refused.stderr) == (2, "fedtune: --num-clients=0 must be at "
                                                        "least 1.\n")
