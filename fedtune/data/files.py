"""Read instruction data from JSON / JSONL files (Alpaca or Dolly layout).

Every malformed record is reported as one sentence naming the file, the line (JSONL) or the
record index (JSON), and the field.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

from fedtune.data.example import Example

# layout name -> (instruction, input, output, category) field names
LAYOUTS = {
    "alpaca": ("instruction", "input", "output", "category"),
    "dolly": ("instruction", "context", "response", "category"),
}


class DataFileError(ValueError):
    """A malformed data file; the message names the file, line and field."""


def _open(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else path.open(
        encoding="utf-8")


def _records(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(location, record) pairs; location is 'line N' for JSONL, 'record N' for JSON."""
    name = path.name.removesuffix(".gz")
    with _open(path) as fh:
        if name.endswith(".jsonl"):
            out = []
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    out.append((f"line {lineno}", json.loads(line)))
                except json.JSONDecodeError as err:
                    raise DataFileError(
                        f"{path}: line {lineno} is not valid JSON ({err.msg}); fix or remove it."
                    ) from None
            return out
        if name.endswith(".json"):
            try:
                data = json.load(fh)
            except json.JSONDecodeError as err:
                raise DataFileError(
                    f"{path}: line {err.lineno} is not valid JSON ({err.msg}); fix the syntax."
                ) from None
            if not isinstance(data, list):
                raise DataFileError(f"{path}: expected a JSON list of records at the top level.")
            return [(f"record {i}", r) for i, r in enumerate(data)]
    raise DataFileError(f"{path}: unsupported file type; use .json, .jsonl or .jsonl.gz.")


def _layout(record: dict[str, Any]) -> str:
    return "dolly" if "response" in record else "alpaca"


def read_examples(path: str | Path) -> list[Example]:
    """All examples of an Alpaca- or Dolly-layout file (the layout is detected per record)."""
    p = Path(path)
    if not p.is_file():
        raise DataFileError(f"Data file '{p}' does not exist; pass an existing file or 'builtin'.")
    out: list[Example] = []
    for where, record in _records(p):
        if not isinstance(record, dict):
            raise DataFileError(f"{p}: {where} is not a JSON object; each record needs fields.")
        inst, inp, outp, cat = LAYOUTS[_layout(record)]
        for field in (inst, outp):
            if not isinstance(record.get(field), str) or not record[field].strip():
                raise DataFileError(
                    f"{p}: {where}: field '{field}' is missing or not a non-empty string; "
                    f"each record needs '{inst}' and '{outp}' text."
                )
        extra = record.get(inp, "")
        if not isinstance(extra, str):
            raise DataFileError(f"{p}: {where}: field '{inp}' must be a string.")
        out.append(Example(instruction=record[inst], input=extra, output=record[outp],
                           category=str(record.get(cat, ""))))
    if not out:
        raise DataFileError(f"{p}: no records found; the file is empty.")
    return out
