"""``report-to`` (issue #28 item 1): what each tracker got, read back with the tracker's own
reader (TensorBoard's EventAccumulator, MLflow's client, W&B's offline run file through W&B's
own record protobuf), never a mock of the library. The run driver is fed rows as the round
loop feeds it; one real in-process run checks the loop's rows get there too."""

from __future__ import annotations

import json
import logging
import struct
import sys
import time
from pathlib import Path

import pytest

from fedtune.config import Config
from fedtune.driver import RunDriver
from fedtune.errors import ConfigError
from fedtune.tracking import STATE, log_final_metrics, parse_report_to

ROWS = [{"round": r, "algorithm": "fedit", "objective": "sft", "train_loss": None if r == 0
         else 2.0 / r, "eval_loss": 1.0 / (r + 1), "exact_match/parity": 0.25 * r,
         "bytes_down_per_client": 1000, "epsilon": 0.5 * r, "skip_reason": "text",
         "seconds": 0.1} for r in range(4)]


@pytest.fixture(autouse=True)
def tracker_env(monkeypatch, tmp_path):
    """No caller's tracker settings: MLflow's local store, W&B offline with its caches here."""
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "WANDB_API_KEY",
                 "WANDB_PROJECT", "WANDB_BASE_URL", "WANDB_SILENT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    for name in ("WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home"))
    monkeypatch.setattr("fedtune.driver.plot_metrics", lambda *a, **k: None)


def _cfg(run_dir: Path, report_to: str, **extra) -> Config:
    return Config.from_flat({"report-to": report_to, "run-dir": str(run_dir),
                             "num-server-rounds": 3, **extra})


def _drive(cfg: Config, rows, resume_rows=None, finish=True) -> RunDriver:
    driver = RunDriver(cfg, "test", resume_rows=resume_rows)
    for row in rows:
        driver.log(dict(row))
    if finish:
        (driver.dir / "adapter").mkdir(exist_ok=True)
        (driver.dir / "adapter" / "adapter_config.json").write_text("{}")
        driver.finish(driver.dir / "adapter", "test")
    return driver


# ---- each library's reader ------------------------------------------------------------------
def tb_points(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    return [(e.step, round(e.value, 6)) for e in acc.Scalars(tag)]


def mlflow_run(run_dir: Path):
    from mlflow.tracking import MlflowClient

    state = json.loads((run_dir / STATE).read_text())["mlflow"]
    client = MlflowClient(tracking_uri=f"sqlite:///{run_dir / 'mlflow.db'}")
    return client, client.get_run(state["run_id"])


def mlflow_points(run_dir: Path, key: str) -> list[tuple[int, float]]:
    client, run = mlflow_run(run_dir)
    return sorted((m.step, round(m.value, 6)) for m in
                  client.get_metric_history(run.info.run_id, key))


def wandb_records(run_dir: Path) -> list:
    """Every record of the run's offline ``.wandb`` files (W&B's transaction log: a 7-byte
    header, then LevelDB-style 32 KiB blocks of chunks, each ``crc32c, length, type``; the
    records are W&B's own ``Record`` protobuf). W&B 0.31 ships no Python reader for it. Its
    service process may still be flushing a file when ``finish()`` returns: read until every
    file holds its run's exit record (at most 60 s)."""
    deadline = time.monotonic() + 60
    while True:
        files = [_wandb_file(p) for p in sorted((run_dir / "wandb").glob(
            "offline-run-*/run-*.wandb"))]
        done = all(any(r.WhichOneof("record_type") == "exit" for r in f) for f in files)
        if done or time.monotonic() > deadline:
            return [r for f in files for r in f]
        time.sleep(0.2)


def _wandb_file(path: Path) -> list:
    from google.protobuf.message import DecodeError
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, buf, out = path.read_bytes(), 7, b"", []
    if data[:4] != b":W&B":  # not written yet
        return out
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header: padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0 or len(chunk) < length:  # the end, or a chunk still being written
            break
        buf = chunk if kind in (1, 2) else buf + chunk
        if kind in (1, 4):  # FULL or LAST: one whole record
            record = pb.Record()
            try:
                record.ParseFromString(buf)
            except DecodeError:
                break
            out.append(record)
    return out


def wandb_points(run_dir: Path, key: str) -> list[tuple[int, float]]:
    points = []
    for record in wandb_records(run_dir):
        if record.WhichOneof("record_type") == "history":
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json)
                     for i in record.history.item}
            if key in items:
                points.append((int(items["_step"]), round(items[key], 6)))
    return points


# ---- the config key --------------------------------------------------------------------------
def test_report_to_is_a_comma_list_of_known_trackers():
    assert parse_report_to("none") == parse_report_to("") == ()
    assert parse_report_to(" TensorBoard, mlflow,mlflow ") == ("tensorboard", "mlflow")
    assert Config().output.report_to == "none"
    for bad, word in (("foo", "'foo'"), ("tensorboard,comet", "'comet'"),
                      ("none,wandb", "'none' alone")):
        with pytest.raises(ConfigError) as err:
            Config.from_flat({"report-to": bad})
        message = str(err.value)
        assert word in message and "tensorboard, mlflow, wandb" in message, message
        assert "\n" not in message and message.endswith("."), message


# ---- what each tracker gets ------------------------------------------------------------------
def test_every_row_config_tags_and_artifacts_reach_each_tracker(tmp_path):
    run_dir = tmp_path / "run"
    cfg = _cfg(run_dir, "tensorboard,mlflow,wandb")
    _drive(cfg, ROWS)
    expected = [(r["round"], round(r["eval_loss"], 6)) for r in ROWS]
    # TensorBoard: one point per round, per-category metrics, epsilon, bytes; config as text
    assert tb_points(run_dir, "eval_loss") == expected
    assert tb_points(run_dir, "exact_match/parity")[-1] == (3, 0.75)
    assert [s for s, _ in tb_points(run_dir, "train_loss")] == [1, 2, 3]  # None skipped
    assert tb_points(run_dir, "epsilon")[-1] == (3, 1.5)
    assert tb_points(run_dir, "bytes_down_per_client")[0] == (0, 1000.0)
    # MLflow: the history, the flat config as params, name and algorithm as tags, artifacts
    assert mlflow_points(run_dir, "eval_loss") == expected
    client, run = mlflow_run(run_dir)
    assert run.data.params["report-to"] == "tensorboard,mlflow,wandb"
    assert run.data.params["lr"] == str(cfg.train.lr)
    assert len(run.data.params) == len(cfg.to_flat())
    assert run.data.tags["algorithm"] == "fedit" and run.data.tags["run_name"] == "fedit-sft"
    assert run.info.run_name == "run" and run.info.status == "FINISHED"
    assert "skip_reason" not in run.data.metrics and "round" not in run.data.metrics
    kept = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"adapter", "summary.json"} <= kept, kept
    # W&B offline: history by step, the config, name and tags, the artifacts
    assert wandb_points(run_dir, "eval_loss") == expected
    assert wandb_points(run_dir, "exact_match/parity")[-1] == (3, 0.75)
    records = wandb_records(run_dir)
    runs = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert runs[0].display_name == "run" and set(runs[0].tags) == {"fedit", "sft"}
    config = {i.key: json.loads(i.value_json) for i in runs[0].config.update}
    assert config["lr"] == cfg.train.lr and config["report-to"] == cfg.output.report_to
    artifacts = {r.artifact.type: r.artifact for r in records
                 if r.WhichOneof("record_type") == "artifact"}
    assert {e.path for e in artifacts["model"].manifest.contents} == {"adapter_config.json"}
    assert {e.path for e in artifacts["results"].manifest.contents} == {"summary.json"}
    # the scores of `fedtune evaluate` go to the same runs, at the last round
    assert log_final_metrics(run_dir, {"lm_eval/acc": 0.5}) == ["tensorboard", "mlflow",
                                                                "wandb"]
    assert tb_points(run_dir, "lm_eval/acc") == [(3, 0.5)]
    assert mlflow_points(run_dir, "lm_eval/acc") == [(3, 0.5)]
    summaries = [r.summary for r in wandb_records(run_dir)
                 if r.WhichOneof("record_type") == "summary"]
    assert any(json.loads(i.value_json) == 0.5 for s in summaries for i in s.update
               if i.key == "lm_eval/acc")


def test_nothing_per_client_reaches_a_tracker(tmp_path):
    """A row's per-client replies go to clients.jsonl in the run folder only (under DP they are
    counts), never to a tracker, which may upload what it gets."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "run"
    replies = [{"node": "client-0001", "train_loss": 9.5, "examples": 7}]
    _drive(_cfg(run_dir, "tensorboard"), [{**ROWS[0], "replies": replies}])
    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    assert set(acc.Tags()["scalars"]) == {
        "eval_loss", "exact_match/parity", "bytes_down_per_client", "epsilon", "seconds"}
    assert all(v.value != 9.5 for tag in acc.Tags()["scalars"] for v in acc.Scalars(tag))
    assert "client-0001" in (run_dir / "clients.jsonl").read_text()


def test_no_tracker_writes_nothing(tmp_path):
    run_dir = tmp_path / "run"
    _drive(_cfg(run_dir, "none"), ROWS[:2])
    assert not (run_dir / STATE).exists() and not (run_dir / "tensorboard").exists()
    assert log_final_metrics(run_dir, {"acc": 1.0}) == []


# ---- resume ----------------------------------------------------------------------------------
def test_a_resumed_run_continues_each_tracker_run_with_one_point_per_round(tmp_path):
    """The first process logged rounds 0-2 but checkpointed only round 1, then died; the
    resumed one redoes round 2 (its value differs here to tell them apart) and round 3."""
    run_dir = tmp_path / "run"
    cfg = _cfg(run_dir, "tensorboard,mlflow,wandb")
    first = _drive(cfg, ROWS[:3], finish=False)
    first.trackers.close()  # the process ends (W&B flushes its file)
    ids = json.loads((run_dir / STATE).read_text())
    redo = [{**ROWS[2], "eval_loss": 0.3}, ROWS[3]]
    resumed = _cfg(run_dir, "tensorboard,mlflow,wandb", resume=str(run_dir))
    _drive(resumed, redo, resume_rows=ROWS[:2])
    steps = [0, 1, 2, 3]
    assert [s for s, _ in tb_points(run_dir, "eval_loss")] == steps
    assert tb_points(run_dir, "eval_loss")[2] == (2, 0.3)  # purged and rewritten
    assert [s for s, _ in mlflow_points(run_dir, "eval_loss")] == steps  # same run, no dupes
    assert [s for s, _ in wandb_points(run_dir, "eval_loss")] == steps
    now = json.loads((run_dir / STATE).read_text())
    assert now["mlflow"]["run_id"] == ids["mlflow"]["run_id"]
    assert now["wandb"]["id"] == ids["wandb"]["id"]
    assert {r.run.run_id for r in wandb_records(run_dir)
            if r.WhichOneof("record_type") == "run"} == {ids["wandb"]["id"]}
    assert mlflow_run(run_dir)[1].info.status == "FINISHED"


def test_a_tracker_added_at_resume_gets_the_rounds_so_far(tmp_path):
    run_dir = tmp_path / "run"
    first = _drive(_cfg(run_dir, "none"), ROWS[:2], finish=False)
    first.trackers.close()
    _drive(_cfg(run_dir, "tensorboard", resume=str(run_dir)), ROWS[2:], resume_rows=ROWS[:2])
    assert [s for s, _ in tb_points(run_dir, "eval_loss")] == [0, 1, 2, 3]


# ---- failures --------------------------------------------------------------------------------
def test_a_tracker_failing_mid_run_is_logged_and_the_run_and_others_go_on(tmp_path, caplog,
                                                                        monkeypatch):
    from fedtune.tracking.tensorboard_run import TensorBoardRun

    real = TensorBoardRun.log

    def flaky(self, step, metrics):
        if step == 2:
            raise OSError("disk full")
        real(self, step, metrics)

    monkeypatch.setattr(TensorBoardRun, "log", flaky)
    run_dir = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="fedtune"):
        _drive(_cfg(run_dir, "tensorboard,wandb"), ROWS)
    assert (run_dir / "summary.json").exists()  # the run finished
    lines = [r.getMessage() for r in caplog.records if r.name == "fedtune"]
    assert len(lines) == 1 and "tensorboard tracker failed at round 2" in lines[0], lines
    assert "disk full" in lines[0]
    assert [s for s, _ in tb_points(run_dir, "eval_loss")] == [0, 1]  # dropped after
    assert [s for s, _ in wandb_points(run_dir, "eval_loss")] == [0, 1, 2, 3]


@pytest.mark.parametrize("name,module", [("mlflow", "mlflow"), ("wandb", "wandb"),
                                         ("tensorboard", "tensorboard")])
def test_a_missing_tracker_is_one_sentence_before_any_engine(name, module, monkeypatch,
                                                             capsys):
    from fedtune import cli

    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    if name == "tensorboard":
        monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    if name == "mlflow":
        monkeypatch.setitem(sys.modules, "mlflow.tracking", None)

    def no_engine(*args, **kwargs):
        raise AssertionError("an engine started")

    monkeypatch.setattr(cli, "_run_flower_simulation", no_engine)
    code = cli.main(["simulate", "--rounds", "1", "--run-config", f"report-to='{name}'"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0, err
    assert f"report-to names {name}" in err and 'pip install -e ".[tracking]"' in err, err


def test_the_server_app_checks_the_trackers_at_its_start(monkeypatch):
    """Deployment: no CLI runs before the ServerApp, so its start checks them."""
    from flwr.app import Context, RecordDict

    import server_app.app as server

    monkeypatch.setitem(sys.modules, "mlflow", None)
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)
    monkeypatch.setattr(server, "run_server", lambda *a, **k: pytest.fail("the run started"))
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                      run_config={"report-to": "mlflow"})
    with pytest.raises(ConfigError, match=r"pip install -e \"\.\[tracking\]\""):
        server.main(None, context)


def test_a_tracker_that_cannot_start_is_one_sentence(monkeypatch, tmp_path):
    """An MLflow server that does not answer; W&B online without credentials."""
    from fedtune.tracking import check_trackers

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens
    with pytest.raises(ConfigError) as err:
        check_trackers(["mlflow"])
    assert "MLFLOW_TRACKING_URI='http://127.0.0.1:9' fails" in str(err.value)
    assert "\n" not in str(err.value) and str(err.value).endswith(".")
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    from wandb.sdk import wandb_setup

    wandb_setup.singleton().settings.mode = "online"  # W&B read WANDB_MODE before the test
    with pytest.raises(ConfigError, match="no API key"):
        check_trackers(["wandb"])


# ---- a real run ------------------------------------------------------------------------------
def test_the_round_loop_rows_reach_the_tracker(tmp_path, one_thread):
    """The in-process grid: the server's real rows (round 0 and each round) in TensorBoard."""
    from flwr.app import Context, RecordDict

    from client_app.app import app as client_app
    from server_app.app import main as server_main
    from tests.inprocess_grid import InProcessGrid

    flat = {"num-server-rounds": 2, "local-steps": 1, "examples-per-client": 4,
            "eval-examples": 2, "client-eval-examples": 2, "max-new-tokens": 1,
            "fraction-evaluate": 0.0, "fraction-train": 1.0, "min-train-nodes": 2,
            "min-available-nodes": 2, "batch-size": 2, "report-to": "tensorboard",
            "run-dir": str(tmp_path / "run")}
    server_main(InProcessGrid(client_app, 2, flat), Context(
        run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=flat))
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().split("\n")
            if x]
    points = tb_points(tmp_path / "run", "eval_loss")
    assert [s for s, _ in points] == [r["round"] for r in rows] == [0, 1, 2]
    assert [v for _, v in points] == pytest.approx([r["eval_loss"] for r in rows], rel=1e-6)
