"""Instruction examples from a data file or hub dataset: each raw record -> an :class:`Example`.

Layouts, detected per record: ``chat`` (a ``messages`` list of ``{role, content}``; the last
assistant turn is the response, the turns before it the prompt), ``dolly`` (``instruction``,
``context``, ``response``, ``category``) and ``alpaca`` (``instruction``, ``input``, ``output``,
optional ``category``). Any other layout is mapped with ``data-fields``, e.g.
``"instruction=question,output=answer,category=topic"``: the named fields replace the Alpaca
names (or, with ``messages=<field>``, the chat field). A single Natural Instructions task file is
read whole (no preprocessing rules; folders are :mod:`fedtune.data.sources`' business). Every
malformed record is reported as one sentence naming the file, the line or record, and the field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fedtune.data.example import Example
from fedtune.data.natural_instructions import task_examples, task_instances
from fedtune.data.readers import DataFileError, Record, source_records

__all__ = ["DataFileError", "read_examples", "to_example"]

LAYOUTS: dict[str, dict[str, str]] = {
    "alpaca": {"instruction": "instruction", "input": "input", "output": "output",
               "category": "category"},
    "dolly": {"instruction": "instruction", "input": "context", "output": "response",
              "category": "category"},
    "chat": {"messages": "messages", "category": "category"},
}


def layout_for(record: Record, fields: dict[str, str]) -> dict[str, str]:
    """Target name -> record field for this record (detected layout + ``data-fields``)."""
    if "messages" in fields:
        return {**LAYOUTS["chat"], **fields}
    if "instruction" in fields or "output" in fields:
        return {**LAYOUTS["alpaca"], **fields}
    if "messages" in record:
        base = LAYOUTS["chat"]
    elif "response" in record and "output" not in record:
        base = LAYOUTS["dolly"]
    else:
        base = LAYOUTS["alpaca"]
    return {**base, **fields}


def _text(value: Any) -> str | None:
    """Text of a cell: strings as they are, numbers as written; ``None`` for anything else."""
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


def _present(record: Record) -> str:
    return ", ".join(f"'{k}'" for k in record) or "none"


def _required(record: Record, field: str, where: str, hint: str) -> str:
    if field not in record or record[field] is None:
        raise DataFileError(f"{where}: field '{field}' is missing (the record has "
                            f"{_present(record)}); {hint}")
    text = _text(record[field])
    if text is None:
        raise DataFileError(f"{where}: field '{field}' is a {type(record[field]).__name__}, "
                            "not text; give it a string value.")
    if not text.strip():
        raise DataFileError(f"{where}: field '{field}' is empty; give it text or remove the "
                            "record.")
    return text


def _optional(record: Record, field: str, where: str) -> str:
    value = record.get(field)
    if value is None:
        return ""
    text = _text(value)
    if text is None:
        raise DataFileError(f"{where}: field '{field}' is a {type(value).__name__}, not text; "
                            "give it a string value.")
    return text


def _turns(value: Any, field: str, where: str) -> list[tuple[str, str]]:
    if isinstance(value, str):  # CSV cells hold the list as JSON text
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            value = None
    if not isinstance(value, list) or not value:
        raise DataFileError(f"{where}: field '{field}' must be a non-empty list of "
                            "{role, content} turns.")
    turns = []
    for i, turn in enumerate(value):
        role = turn.get("role") if isinstance(turn, dict) else None
        content = turn.get("content") if isinstance(turn, dict) else None
        if not isinstance(role, str) or not isinstance(content, str):
            raise DataFileError(f"{where}: {field}[{i}] needs string 'role' and 'content' "
                                "fields.")
        turns.append((role.strip().lower(), content))
    return turns


def _chat_example(record: Record, names: dict[str, str], where: str) -> Example:
    field = names["messages"]
    if field not in record or record[field] is None:
        raise DataFileError(f"{where}: field '{field}' is missing (the record has "
                            f"{_present(record)}); set data-fields to name the chat field.")
    turns = _turns(record[field], field, where)
    last = max((i for i, (role, _) in enumerate(turns) if role == "assistant"), default=-1)
    if last < 0:
        raise DataFileError(f"{where}: '{field}' has no 'assistant' turn; the last assistant "
                            "turn is the response to learn.")
    if last == 0:
        raise DataFileError(f"{where}: '{field}' starts with the assistant turn; the response "
                            "needs a prompt turn before it.")
    if not turns[last][1].strip():
        raise DataFileError(f"{where}: {field}[{last}] (the last assistant turn) is empty; "
                            "give it text or remove the record.")
    prompt = turns[:last]
    users = [i for i, (role, _) in enumerate(prompt) if role == "user"]
    main = users[-1] if users else len(prompt) - 1
    history = "\n".join(f"{role}: {content}" for i, (role, content) in enumerate(prompt)
                        if i != main)
    return Example(instruction=prompt[main][1], output=turns[last][1], input=history,
                   category=_optional(record, names["category"], where),
                   messages=tuple(prompt))


def to_example(record: Any, where: str, fields: dict[str, str] | None = None) -> Example:
    """One record -> Example; ``where`` (``"file: line 3"``) prefixes any error."""
    if not isinstance(record, dict):
        raise DataFileError(f"{where} is not an object with fields; each record needs "
                            "named fields.")
    names = layout_for(record, fields or {})
    if "messages" in names:
        return _chat_example(record, names, where)
    inst, outp = names["instruction"], names["output"]
    hint = (f"each record needs '{inst}' and '{outp}' text, or set data-fields "
            "(e.g. 'instruction=question,output=answer') to map yours.")
    return Example(instruction=_required(record, inst, where, hint),
                   output=_required(record, outp, where, hint),
                   input=_optional(record, names["input"], where),
                   category=_optional(record, names["category"], where))


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
