"""Raw records (dicts) of one data file or Hugging Face dataset, each with where it came from.

A reader yields ``(location, record)`` pairs: ``location`` is ``line N`` (JSONL, CSV),
``record N`` (JSON list) or ``row N`` (Parquet, hub datasets), so any later error can name the
exact record. Supported: ``.json`` (a list of records, or one Natural Instructions task object),
``.jsonl``, ``.csv``, each optionally ``.gz``; ``.parquet``; and Hugging Face dataset names
(``owner/name``, ``owner/name:split`` or ``hf:name[:split]``), which need network access.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import re
import socket
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlparse

from fedtune.data.config import parse_fields
from fedtune.errors import ConfigError

Record = dict[str, Any]

SUFFIXES = (".json", ".jsonl", ".csv", ".parquet")
_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")  # a JSON escape of a UTF-16 surrogate
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?(:[\w.-]+)?$")


class DataFileError(ConfigError):
    """A malformed or unreadable data source; the message names the file, line and field (a
    :class:`ConfigError`, so the CLI prints it as one sentence)."""


def data_suffix(path: str | Path) -> str:
    """The data suffix of a file name, ignoring a trailing ``.gz`` (``''`` if none)."""
    name = str(path).lower().removesuffix(".gz")
    return next((s for s in SUFFIXES if name.endswith(s)), "")


def is_hub_name(spec: str) -> bool:
    """``hf:name[:split]``, or ``owner/name[:split]`` that is not a local path or data file."""
    if spec.startswith("hf:"):
        return bool(_HUB_NAME.match(spec[3:]))
    return ("/" in spec and not Path(spec).exists() and not data_suffix(spec)
            and bool(_HUB_NAME.match(spec)))


def _open(path: Path) -> IO[str]:
    """UTF-8 text; ``utf-8-sig`` drops the byte-order mark spreadsheet programs write, which
    would otherwise stick to the first CSV column's name (``'\\ufeffinstruction'``)."""
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    return path.open(encoding="utf-8-sig", newline="")


def _jsonl(path: Path, fh: IO[str]) -> Iterator[tuple[str, Any]]:
    for lineno, line in enumerate(fh, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataFileError(
                f"{path}: line {lineno} is not valid JSON ({err.msg}); fix or remove it."
            ) from None
        except (ValueError, RecursionError) as err:  # an int of > 4300 digits; deep nesting
            raise DataFileError(f"{path}: line {lineno} cannot be read as JSON ({_why(err)}); "
                                "fix or remove it.") from None
        _whole_characters(path, f"line {lineno}", line, record)
        yield f"line {lineno}", record


def _whole_characters(path: Path, where: str, raw: str, data: Any) -> None:
    """JSON may escape half a UTF-16 pair (``"\\ud800"``); such text is no Unicode string (a
    tokenizer raises TypeError on it), so say where it is."""
    if not _SURROGATE.search(raw):
        return
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise DataFileError(f"{path}: {where} escapes half of a UTF-16 surrogate pair (e.g. "
                            "\\ud800 alone), which is no character; fix or remove it.") from None


def _why(err: BaseException) -> str:
    """The first clause of a JSON reader error that is not a syntax error."""
    if isinstance(err, RecursionError):
        return "it nests lists or objects too deeply"
    return str(err).split(":")[0].split(";")[0]


def _json(path: Path, fh: IO[str]) -> Iterator[tuple[str, Any]]:
    try:
        raw = fh.read()
        data = json.loads(raw)
    except json.JSONDecodeError as err:
        raise DataFileError(
            f"{path}: line {err.lineno} is not valid JSON ({err.msg}); fix the syntax."
        ) from None
    except (ValueError, RecursionError) as err:  # an int of > 4300 digits; deep nesting
        raise DataFileError(f"{path}: cannot be read as JSON ({_why(err)}); fix it.") from None
    _whole_characters(path, "the file", raw, data)
    if isinstance(data, dict) and "Instances" in data:
        yield "task", data  # a Natural Instructions task file: one object, many instances
        return
    if not isinstance(data, list):
        raise DataFileError(f"{path}: expected a JSON list of records at the top level "
                            "(or a Natural Instructions task object with 'Instances').")
    yield from ((f"record {i}", r) for i, r in enumerate(data))


def _csv(path: Path, fh: IO[str]) -> Iterator[tuple[str, Any]]:
    reader = csv.DictReader(fh)
    start = 2  # line 1 is the header
    try:
        for row in reader:
            if None in row:
                raise DataFileError(f"{path}: line {start} has more cells than the header "
                                    f"({len(reader.fieldnames or [])} columns); quote cells "
                                    "that contain commas.")
            yield f"line {start}", row
            start = reader.line_num + 1
    except csv.Error as err:
        raise DataFileError(f"{path}: line {reader.line_num} is not valid CSV ({err}); "
                            "fix the quoting.") from None


def _parquet(path: Path) -> Iterator[tuple[str, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataFileError(f"{path}: reading Parquet needs pyarrow; install it with "
                            "`pip install pyarrow` (or `pip install 'fedtune[data]'`).") from None
    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as err:  # pyarrow raises several types for corrupt files
        raise DataFileError(f"{path}: not a readable Parquet file ({err}).") from None
    yield from ((f"row {i}", r) for i, r in enumerate(rows))


def file_records(path: str | Path) -> Iterator[tuple[str, Any]]:
    """``(location, record)`` pairs of one local data file."""
    p = Path(path)
    if p.is_dir():
        raise DataFileError(f"'{p}' is a folder; pass a data file, a Natural Instructions "
                            "folder or a folder of local_training_<i>.json files.")
    if not p.is_file():
        raise DataFileError(f"Data file '{p}' does not exist; pass an existing file, a folder, "
                            "a Hugging Face dataset name or 'builtin'.")
    kind = data_suffix(p)
    if kind == ".parquet":
        if p.suffix == ".gz":
            raise DataFileError(f"{p}: Parquet is compressed internally; do not gzip it.")
        yield from _parquet(p)
        return
    if not kind:
        raise DataFileError(f"{p}: unsupported file type; use .json, .jsonl, .csv (each "
                            "optionally .gz) or .parquet.")
    read = {".json": _json, ".jsonl": _jsonl, ".csv": _csv}[kind]
    try:
        with _open(p) as fh:
            yield from read(p, fh)
    except UnicodeDecodeError as err:
        raise DataFileError(f"{p}: byte {err.start} is not UTF-8 text ({err.reason}); save "
                            "the file as UTF-8 (in a spreadsheet: CSV UTF-8).") from None
    except (OSError, EOFError, zlib.error) as err:  # not gzip, a truncated .gz, unreadable
        raise DataFileError(f"{p}: cannot be read ({type(err).__name__}: "
                            f"{str(err).splitlines()[0] if str(err) else 'no detail'}); "
                            "check the file (a .gz name needs gzip content).") from None


def _hub_reachable() -> bool:
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    try:
        socket.create_connection((host or "huggingface.co", 443), timeout=5).close()
        return True
    except OSError:
        return False


def hub_records(spec: str) -> Iterator[tuple[str, Any]]:
    """Rows of a Hugging Face dataset: ``owner/name``, ``owner/name:split`` or ``hf:...``
    (split ``train`` by default). Offline, this fails at once with one sentence, unless
    ``HF_HUB_OFFLINE=1`` asks for a cached copy."""
    name, _, split = spec.removeprefix("hf:").partition(":")
    split = split or "train"
    try:
        import datasets
    except ImportError:
        raise DataFileError(f"Loading the Hugging Face dataset '{name}' needs the `datasets` "
                            "package; install it with `pip install 'fedtune[data]'`.") from None
    offline = os.environ.get("HF_HUB_OFFLINE", "") in ("1", "true", "True") or os.environ.get(
        "HF_DATASETS_OFFLINE", "") in ("1", "true", "True")
    if not offline and not _hub_reachable():
        raise DataFileError(
            f"Cannot load '{spec}': it is not a local file or folder, and as a Hugging Face "
            "dataset it needs network access, which this machine lacks; fix the path, or "
            "download the dataset elsewhere and pass the local file."
        )
    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as err:  # hub, network and builder errors have no common base class
        raise DataFileError(f"Could not load the Hugging Face dataset '{name}' (split "
                            f"'{split}'): {err}; check the name and split, or pass a local "
                            "file.") from None
    yield from ((f"row {i}", r) for i, r in enumerate(ds))


def source_records(source: str | Path, fields: str | dict[str, str] = ""
                   ) -> tuple[Iterator[tuple[str, Record]], dict[str, str]]:
    """(``(location, record)`` pairs of a data file or hub dataset, the parsed ``data-fields``)."""
    if isinstance(fields, str):
        try:
            fields = parse_fields(fields)
        except ValueError as err:
            raise DataFileError(str(err)) from None
    hub = isinstance(source, str) and is_hub_name(source)
    return (hub_records(source) if hub else file_records(source)), fields
