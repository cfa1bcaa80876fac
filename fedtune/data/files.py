"""Read instruction examples from one data source: a file or a Hugging Face dataset name.

Formats are in :mod:`fedtune.data.readers` (JSON, JSONL, CSV, Parquet, hub datasets), layouts
in :mod:`fedtune.data.layouts` (Alpaca, Dolly, chat, ``data-fields`` mappings); a single
Natural Instructions task file is read whole (no preprocessing rules). Every malformed record
is reported as one sentence naming the file, the line or record, and the field.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from fedtune.data.example import Example
from fedtune.data.layouts import parse_fields, to_example
from fedtune.data.natural_instructions import task_examples, task_instances
from fedtune.data.readers import (
    DataFileError,
    Record,
    file_records,
    hub_records,
    is_hub_name,
)

__all__ = ["DataFileError", "read_examples", "source_records"]


def source_records(source: str | Path, fields: str | dict[str, str] = ""
                   ) -> tuple[Iterator[tuple[str, Record]], dict[str, str]]:
    """(``(where, record)`` pairs of a data file or hub dataset, the parsed ``data-fields``)."""
    if isinstance(fields, str):
        try:
            fields = parse_fields(fields)
        except ValueError as err:
            raise DataFileError(str(err)) from None
    hub = isinstance(source, str) and is_hub_name(source)
    return (hub_records(source) if hub else file_records(source)), fields


def read_examples(source: str | Path, fields: str | dict[str, str] = "") -> list[Example]:
    """All examples of a data file or hub dataset; ``fields`` is a ``data-fields`` mapping."""
    records, fields = source_records(source, fields)
    out: list[Example] = []
    for where, record in records:
        if where == "task":  # a Natural Instructions task object
            p = Path(source)
            definition, pairs = task_instances(record, p)
            out += task_examples(p.name.removesuffix(".gz").removesuffix(".json"),
                                 definition, pairs)
            continue
        out.append(to_example(record, f"{source}: {where}", fields))
    if not out:
        raise DataFileError(f"{source}: no records found; the source is empty.")
    return out
