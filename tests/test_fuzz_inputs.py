"""Bad-input fuzzing (issue #18, item 3): the config parser and the data readers. Every input
either works or ends in one of fedtune's own one-sentence errors (:data:`USER_ERRORS`), and a
resume given bad input leaves everything already written as it was.
"""

from __future__ import annotations

import gzip
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from fedtune.checkpoint import CheckpointError
from fedtune.config import Config, parse_overrides
from tests.fuzzing import USER_ERRORS, one_sentence

KEYS = sorted(Config.keys())


# ---- (a) the config parser ---------------------------------------------------------------
weird_numbers = st.sampled_from([math.nan, math.inf, -math.inf, 10**400, -(10**400), 1e308,
                                 -1e308, 2**63, -(2**63) - 1, 0, -1, 0.5, -0.0, 1e-320])
scalars = st.one_of(
    st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True), weird_numbers,
    st.text(max_size=20), st.sampled_from(["nan", "inf", "-inf", "1e999", "", " ", "0x10",
                                           "1_000", "true", "None", "auto", "１"]),
)
json_values = st.one_of(scalars, st.lists(scalars, max_size=3),
                        st.dictionaries(st.text(max_size=5), scalars, max_size=2), st.just(None))
values = st.one_of(json_values, st.binary(max_size=8))
config_keys = st.one_of(st.sampled_from(KEYS), st.text(max_size=15))


def _config(flat: dict[str, Any]) -> None:
    """Config.from_flat, then the algorithm's checks: what every entry point runs first."""
    from fedtune.algorithms import resolve

    try:
        resolve(Config.from_flat(flat))
    except USER_ERRORS as err:
        one_sentence(err)


@given(st.dictionaries(config_keys, values, max_size=4))
@example({"lr": 10**400})  # float(10**400) raised OverflowError
@example({"seed": math.inf})
@example({"local-steps": -(10**400)})
@example({"model": ["tiny"]})
@example({"zo-seeds": 2**70})
@example({"local-steps": 10**5000})  # str() of it raised ValueError in the message
@example({"lr": True})  # true/false is no number
def test_any_config_is_a_config_or_one_sentence(flat: dict[str, Any]) -> None:
    _config(flat)


@given(st.sampled_from(KEYS), values)
def test_every_key_with_any_value(key: str, value: Any) -> None:
    _config({key: value})


@given(st.text(max_size=40))
@example("lr='")  # an unclosed quote
@example("lr=1e999")
@example("=1")
@example("local-steps=" + "9" * 5000)  # tomllib raised ValueError (int over 4300 digits)
def test_run_config_text_parses_or_says_why(text: str) -> None:
    try:
        flat = parse_overrides(text)
    except USER_ERRORS as err:
        one_sentence(err)
        return
    _config(flat)


# ---- (b) the data readers ----------------------------------------------------------------
SUFFIXES = (".json", ".jsonl", ".csv", ".json.gz", ".jsonl.gz", ".csv.gz")
field_values = st.one_of(scalars, st.lists(scalars, max_size=2),
                         st.dictionaries(st.sampled_from(["role", "content", "from", "value"]),
                                         scalars, max_size=2),
                         st.lists(st.dictionaries(st.sampled_from(["role", "content", "from",
                                                                   "value"]),
                                                  st.one_of(st.sampled_from(
                                                      ["user", "assistant", "gpt", "human",
                                                       "system"]), scalars), max_size=2),
                                  max_size=3))
FIELDS = ["instruction", "input", "output", "response", "context", "category", "messages",
          "conversations", "prompt", "chosen", "rejected", "system", "Instances", "Definition"]
records = st.dictionaries(st.sampled_from(FIELDS), field_values, max_size=5)
good = {"instruction": "Say hi.", "output": "hi", "prompt": "Say hi.", "chosen": "hi",
        "rejected": "no"}


def _render(rows: list[Any], suffix: str) -> str:
    """Rows as the text of a ``suffix`` file (CSV: the union of keys as the header)."""
    if ".csv" in suffix:
        import csv
        import io

        names = sorted({k for r in rows if isinstance(r, dict) for k in r})
        out = io.StringIO()
        writer = csv.DictWriter(out, names or ["instruction"])
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (json.dumps(v) if not isinstance(v, str) else v)
                             for k, v in (r.items() if isinstance(r, dict) else [])})
        return out.getvalue()
    if ".jsonl" in suffix:
        return "".join(json.dumps(r) + "\n" for r in rows)
    return json.dumps(rows)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


def read_all(path: Path) -> None:
    """Both record types' readers on ``path``: they work or raise a user error."""
    from fedtune.data.instructions import read_examples
    from fedtune.data.preference import read_pairs

    for read in (read_examples, read_pairs):
        try:
            got = read(path)
        except USER_ERRORS as err:
            one_sentence(err)
            continue
        for record in getattr(got, "pairs", got):  # text a tokenizer takes: whole characters
            for value in vars(record).values():
                if isinstance(value, str):
                    value.encode("utf-8")


def mangle(text: str, how: str, cut: float) -> bytes:
    """The file's bytes after one kind of damage."""
    raw = text.encode()
    if how == "truncate":
        return raw[: int(len(raw) * cut)]
    if how == "latin-1":
        return (text + "café ñ").encode("latin-1", errors="replace")
    if how == "utf-16":
        return text.encode("utf-16")
    if how == "utf-32":
        return text.encode("utf-32")
    if how == "nul":
        return raw.replace(b",", b"\x00,", 1)
    if how == "bom":
        return b"\xef\xbb\xbf" + raw
    if how == "crlf":
        return raw.replace(b"\n", b"\r\n")
    if how == "cr":
        return raw.replace(b"\n", b"\r")
    return raw


@given(st.lists(records, max_size=4), st.sampled_from(SUFFIXES),
       st.sampled_from(["none", "truncate", "latin-1", "utf-16", "utf-32", "nul", "bom", "crlf",
                        "cr"]), st.floats(0, 1))
@example([good], ".jsonl", "none", 1.0)
@example([good], ".csv", "utf-16", 1.0)
@example([good], ".json.gz", "truncate", 0.5)
def test_damaged_data_files_are_one_sentence(tmp_path: Path, rows: list[dict], suffix: str,
                                             how: str, cut: float) -> None:
    path = _write(tmp_path / f"data{suffix}", mangle(_render([good, *rows], suffix), how, cut))
    read_all(path)


@given(st.binary(max_size=200), st.sampled_from(SUFFIXES))
@example(b"\x1f\x8b\x08\x00garbage", ".json")
@example(b"[" * 100_000, ".json")  # nesting deeper than the recursion limit
@example(b"1" * 5000 + b"\n", ".jsonl")  # an int over 4300 digits: ValueError, not JSON's
@example(b'{"instruction": "\\ud800", "output": "x"}\n', ".jsonl")  # a lone surrogate
def test_binary_garbage_is_one_sentence(tmp_path: Path, data: bytes, suffix: str) -> None:
    read_all(_write(tmp_path / f"garbage{suffix}", data))


@pytest.mark.parametrize("suffix", [".json.gz", ".jsonl.gz", ".csv.gz"])
def test_a_gz_name_on_plain_or_truncated_bytes_is_one_sentence(tmp_path: Path,
                                                                suffix: str) -> None:
    plain = tmp_path / f"plain{suffix}"
    plain.write_text(_render([good], suffix))  # not gzip at all
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(gzip.compress(_render([good] * 50, suffix).encode())[:40])  # truncated
    for path in (plain, cut):
        read_all(path)


@given(st.sampled_from([".jsonl", ".csv"]), st.integers(1, 3))
def test_huge_lines_are_one_sentence(tmp_path: Path, suffix: str, megabytes: int) -> None:
    long = "x" * (megabytes * 1_000_000)
    read_all(_write(tmp_path / f"huge{suffix}",
                    _render([{**good, "instruction": long}], suffix).encode()))


@given(st.lists(st.lists(st.text(alphabet=',"\n\r\\ab\x00', max_size=6), max_size=4),
                max_size=5))
@example([["instruction", "output"], ['"a', "b"]])  # an unclosed quote
@example([["instruction", "output"], ["a", "b", "c"]])  # more cells than the header
@example([["instruction", "instruction"], ["a", "b"]])  # a duplicate column
@example([['"'], ['"\r\\']])  # a header that is a newline: the message printed it raw
@example([["messages"], ['"[{""role"": ""user"", ""content"": ""\\ud800""}]"']])
@example([["instruction", "output"], ["[" * 5000, "1"]])  # a cell nested too deeply for JSON
def test_csv_oddities_are_one_sentence(tmp_path: Path, rows: list[list[str]]) -> None:
    path = tmp_path / "odd.csv"
    path.write_text("\n".join(",".join(r) for r in rows), newline="")
    read_all(path)


@given(st.lists(records, max_size=6), st.sampled_from(["iid", "dirichlet", "shards", "natural"]),
       st.integers(1, 5), st.sampled_from(["category", "instruction", "input", "output"]))
def test_splitting_any_file_is_one_sentence(tmp_path: Path, rows: list[dict], how: str,
                                            clients: int, by: str) -> None:
    """A file read, held out, partitioned and split per client, as a node's data is."""
    from fedtune.data.config import DataConfig
    from fedtune.data.split import EXAMPLES, PAIRS, split

    path = _write(tmp_path / "d.jsonl", _render([good, *rows], ".jsonl").encode())
    cfg = DataConfig(data=str(path), eval_examples=1, partition=how, partition_by=by)
    for kind in (EXAMPLES, PAIRS):
        for role, pid in (("server", 0), ("train", clients - 1), ("held-out", 0)):
            try:
                split(cfg, kind, role, 0, pid, clients)
            except USER_ERRORS as err:
                one_sentence(err)


@given(st.one_of(st.binary(max_size=64), st.builds(json.dumps, records).map(str.encode),
                 st.builds(lambda r: json.dumps({"Definition": r.get("instruction", ["d"]),
                                                 "Instances": [r] * 25}), records
                           ).map(str.encode)))
@example(b'{"Definition": ["d"], "Instances": ' + b"[" * 50_000 + b"]}")
@example('{"Definition": ["d"], "Instances": []}'.encode("utf-16"))
def test_a_natural_instructions_folder_with_a_bad_task_is_one_sentence(tmp_path: Path,
                                                                        data: bytes) -> None:
    from fedtune.data.config import DataConfig
    from fedtune.data.split import EXAMPLES, split

    folder = tmp_path / "ni"
    folder.mkdir(exist_ok=True)
    ok = {"Definition": ["Copy."], "Instances": [{"input": f"w{i}", "output": [f"w{i}"]}
                                                 for i in range(25)]}
    (folder / "task001_ok.json").write_text(json.dumps(ok))
    (folder / "task002_bad.json").write_bytes(b'{"Definition": ' + data)
    (folder / "task000_bad.json").write_bytes(data)
    try:
        split(DataConfig(data=str(folder)), EXAMPLES, "train", 0, 0, 3)
    except USER_ERRORS as err:
        one_sentence(err)


# ---- nothing already written is lost -------------------------------------------------------
RECORDS = [{"instruction": f"Repeat {w}.", "output": w, "category": "copy"}
           for w in ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi "
                     "omicron pi rho sigma tau upsilon phi chi psi omega").split()]


def _snapshot(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> tuple[Path, Path]:
    """(a one-round FedIT run folder on a JSONL file, that file), run on the in-process grid."""
    from flwr.supercore.task_identity import TaskIdentity

    from client_app.app import app as client_app
    from fedtune.flower.server import run_server
    from tests.conftest import small_config
    from tests.inprocess_grid import InProcessGrid

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1  # module scope
    tmp = tmp_path_factory.mktemp("resume")
    data = tmp / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    cfg = small_config(**{"data": str(data), "eval-examples": 4, "num-server-rounds": 1,
                          "local-steps": 1, "max-new-tokens": 1, "fraction-evaluate": 0.0,
                          "output-dir": str(tmp), "run-name": "orig",
                          "min-available-nodes": 2})
    run = run_server(InProcessGrid(client_app, 2, cfg.to_flat()), cfg)
    return run, data


def _resume_cfg(run: Path) -> Config:
    from fedtune.checkpoint import load_checkpoint

    return Config.from_flat({**load_checkpoint(run).config, "resume": str(run),
                             "run-dir": str(run)})


@pytest.mark.parametrize("how", ["truncate", "utf-16", "latin-1", "garbage", "empty", "types",
                                 "gzip-name"])
def test_a_resume_on_damaged_data_keeps_every_file(finished_run: tuple[Path, Path],
                                                   how: str) -> None:
    """The server reads the data before it touches the run folder."""
    from fedtune.flower.server import run_server
    from tests.inprocess_grid import InProcessGrid

    run, data = finished_run
    before, original = _snapshot(run), data.read_bytes()
    text = original.decode()
    damaged = {"garbage": b"\x00\xff" * 50, "empty": b"", "utf-16": text.encode("utf-16"),
               "truncate": original[: original.index(b"\n", len(original) // 2) - 3],
               "types": text.replace('"Repeat alpha."', "[1, 2]").encode(),
               "latin-1": text.replace("alpha", "\xe4lpha").encode("latin-1"),
               "gzip-name": gzip.compress(original)[:30]}[how]
    data.write_bytes(damaged)
    try:
        with pytest.raises(USER_ERRORS) as err:
            run_server(InProcessGrid(lambda *a: None, 2, {}), _resume_cfg(run))
        one_sentence(err.value)
    finally:
        data.write_bytes(original)
    assert _snapshot(run) == before


@given(items=st.lists(st.tuples(st.sampled_from(KEYS), scalars), min_size=1, max_size=3))
@example(items=[("lr", math.nan)])
@example(items=[("data", "missing.jsonl")])
@example(items=[("local-steps", 10**30)])
def test_a_resume_with_a_bad_config_keeps_every_file(finished_run: tuple[Path, Path],
                                                     items: list[tuple[str, Any]],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """``fedtune simulate --resume RUN --run-config ...``: one sentence (exit 2) or the engine
    would start; either way the folder is as it was."""
    from fedtune import cli

    run, _ = finished_run
    before = _snapshot(run)
    monkeypatch.setattr(cli, "_run_flower_simulation", lambda *a: 0)  # never start Ray here
    text = " ".join(f"{k}={cli._toml_value(v)}" for k, v in items)
    assert cli.main(["simulate", "--resume", str(run), "--run-config", text]) in (0, 2)
    assert _snapshot(run) == before


@given(how=st.sampled_from(["truncate", "flip", "meta", "garbage"]), cut=st.floats(0, 1),
       meta=st.one_of(st.dictionaries(st.sampled_from(["round", "config", "rows"]),
                                      json_values, max_size=3), json_values))
@example(how="meta", cut=0.0, meta={"config": {}, "rows": []})  # no 'round': a bare KeyError
@example(how="meta", cut=0.0, meta={"round": "x", "config": {}, "rows": []})
@example(how="meta", cut=0.0, meta=[1, 2])
@example(how="meta", cut=0.0, meta={"round": 1, "config": {}, "rows": []})  # cli: KeyError
def test_a_damaged_checkpoint_is_one_sentence_and_nothing_else_changes(
        finished_run: tuple[Path, Path], tmp_path: Path, how: str, cut: float, meta: Any,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    import shutil

    from fedtune import cli
    from fedtune.checkpoint import CHECKPOINT, load_checkpoint

    run = tmp_path / "copy"
    shutil.rmtree(run, ignore_errors=True)
    shutil.copytree(finished_run[0], run)
    ckpt = run / CHECKPOINT
    raw = ckpt.read_bytes()
    if how == "truncate":
        ckpt.write_bytes(raw[: int(len(raw) * cut)])
    elif how == "flip":
        at = min(len(raw) - 1, int(len(raw) * cut))
        ckpt.write_bytes(raw[:at] + bytes([raw[at] ^ 0xFF]) + raw[at + 1:])
    elif how == "garbage":
        ckpt.write_bytes(os.urandom(64))
    else:
        with np.load(ckpt) as npz:
            payload = {k: npz[k] for k in npz.files}
        payload["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        with ckpt.open("wb") as fh:
            np.savez(fh, **payload)
    before = _snapshot(run)
    try:
        load_checkpoint(run)
    except CheckpointError as err:
        one_sentence(err)
    monkeypatch.setattr(cli, "_run_flower_simulation", lambda *a: 0)
    code = cli.main(["simulate", "--resume", str(run)])
    assert code in (0, 2), capsys.readouterr().err
    assert _snapshot(run) == before
