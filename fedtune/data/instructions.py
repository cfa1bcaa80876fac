"""Instruction examples from a data file or hub dataset: each raw record -> an :class:`Example`.

Layouts, detected per record:

- ``chat``: a ``messages`` or ``conversations`` list of turns, OpenAI-style ``{role, content}``
  (``user``/``assistant``/``system``) or ShareGPT-style ``{from, value}``
  (``human``/``gpt``/``system``, LLaMA-Factory's ``sharegpt`` layout, whose top-level
  ``system`` text becomes the first turn);
- ``dolly``: ``instruction``, ``context``, ``response``, ``category``;
- ``alpaca``: ``instruction``, ``input``, ``output``, optional ``category``.

A multi-turn conversation gives one example: the **last assistant turn is the response** and
every turn before it is the prompt (later turns are dropped). The prompt keeps its turns
(``messages``) for a tokenizer's chat template; for the Alpaca template, its last user turn is
the ``instruction`` and the other turns (the system turn included) are the ``input`` (the
context), as ``role: content`` lines.

Any other layout is mapped with ``data-fields``, e.g.
``"instruction=question,output=answer,category=topic"``: the named fields replace the Alpaca
names (or, with ``messages=<field>``, the chat field). A field name may be a dotted path into
nested values (:mod:`fedtune.data.fields`), e.g.
``"instruction=conversations.0.value,output=conversations.1.value"``. A single Natural
Instructions task file is read whole (no preprocessing rules; folders are
:mod:`fedtune.data.sources`' business). Every malformed record is reported as one sentence
naming the file, the line or record, and the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedtune.data.example import Example
from fedtune.data.fields import present, text, turns, value_at, with_system
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
    elif "conversations" in record:
        base = {**LAYOUTS["chat"], "messages": "conversations"}
    elif "response" in record and "output" not in record:
        base = LAYOUTS["dolly"]
    else:
        base = LAYOUTS["alpaca"]
    return {**base, **fields}


def _required(record: Record, field: str, where: str, hint: str) -> str:
    value = value_at(record, field)
    if value is None:
        raise DataFileError(f"{where}: field '{field}' is missing (the record has "
                            f"{present(record)}); {hint}")
    content = text(value)
    if content is None:
        raise DataFileError(f"{where}: field '{field}' is a {type(value).__name__}, "
                            "not text; give it a string value.")
    if not content.strip():
        raise DataFileError(f"{where}: field '{field}' is empty; give it text or remove the "
                            "record.")
    return content


def _optional(record: Record, field: str, where: str) -> str:
    value = value_at(record, field)
    if value is None:
        return ""
    content = text(value)
    if content is None:
        raise DataFileError(f"{where}: field '{field}' is a {type(value).__name__}, not text; "
                            "give it a string value.")
    return content


def _chat_example(record: Record, names: dict[str, str], where: str) -> Example:
    field = names["messages"]
    value = value_at(record, field)
    if value is None:
        raise DataFileError(f"{where}: field '{field}' is missing (the record has "
                            f"{present(record)}); set data-fields to name the chat field.")
    dialogue = turns(value, field, where)
    last = max((i for i, (role, _) in enumerate(dialogue) if role == "assistant"), default=-1)
    if last < 0:
        raise DataFileError(f"{where}: '{field}' has no 'assistant' turn (ShareGPT: 'gpt'); "
                            "the last assistant turn is the response to learn.")
    if not any(role != "system" for role, _ in dialogue[:last]):
        raise DataFileError(f"{where}: '{field}' has no turn but system ones before its last "
                            "assistant turn; the response needs a user turn before it.")
    if not dialogue[last][1].strip():
        raise DataFileError(f"{where}: {field}[{last}] (the last assistant turn) is empty; "
                            "give it text or remove the record.")
    prompt = with_system(record, dialogue[:last])
    users = [i for i, (role, _) in enumerate(prompt) if role == "user"]
    main = users[-1] if users else len(prompt) - 1
    history = "\n".join(f"{role}: {content}" for i, (role, content) in enumerate(prompt)
                        if i != main)
    return Example(instruction=prompt[main][1], output=dialogue[last][1], input=history,
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
