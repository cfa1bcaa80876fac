"""Values of a raw record's fields: by name or dotted path, as text, and as chat turns.

A field name given in ``data-fields`` may be a dotted path into nested values:
``conversations.0.value`` is the ``value`` of the first item of ``conversations`` (list items by
index, negative from the end: ``conversations.-1.value`` is the last turn's). A name that is
itself a key of the record (a CSV column ``a.b``) is that key, not a path. A CSV cell that holds
JSON text is parsed when a path goes into it.

Chat turns are OpenAI-style ``{role, content}`` or ShareGPT-style ``{from, value}`` objects
(LLaMA-Factory's ``sharegpt`` layout); ShareGPT's roles ``human`` and ``gpt`` become ``user`` and
``assistant``, the roles a tokenizer's chat template knows; other roles (``system``, ``tool``)
are kept, lowercased.
"""

from __future__ import annotations

import json
from typing import Any

from fedtune.data.readers import DataFileError, Record

ROLES = {"human": "user", "gpt": "assistant"}  # ShareGPT -> chat-template roles
TURN_KEYS = (("role", "content"), ("from", "value"))  # OpenAI, ShareGPT


def parsed(value: Any) -> Any:
    """A CSV cell's JSON list or object, parsed; anything else as it is."""
    if isinstance(value, str) and value.lstrip()[:1] in ("[", "{"):
        try:
            out = json.loads(value)
            if "\\u" in value:  # half a surrogate pair ("\\ud800") is no text: keep the cell
                json.dumps(out, ensure_ascii=False).encode("utf-8")
            return out
        except (ValueError, RecursionError):  # not JSON, an int of > 4300 digits, deep nesting
            return value
    return value


def _step(value: Any, part: str) -> Any:
    value = parsed(value)
    if isinstance(value, dict):
        return value.get(part)
    if isinstance(value, list):
        try:
            index = int(part)
        except ValueError:
            return None
        return value[index] if -len(value) <= index < len(value) else None
    return None


def value_at(record: Record, name: str) -> Any:
    """The record's value of field ``name`` (a key, else a dotted path); ``None`` if absent."""
    if name in record or "." not in name:
        return record.get(name)
    value: Any = record
    for part in name.split("."):
        value = _step(value, part)
        if value is None:
            return None
    return value


def present(record: Record) -> str:
    """The record's field names, for an error message."""
    return ", ".join(repr(str(k)) for k in record) or "none"  # repr: a name with a newline


def text(value: Any) -> str | None:
    """Text of a cell: strings as they are, numbers as written; ``None`` for anything else."""
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


def _turn(turn: Any) -> tuple[str, str] | None:
    if not isinstance(turn, dict):
        return None
    for role_key, content_key in TURN_KEYS:
        role, content = turn.get(role_key), turn.get(content_key)
        if isinstance(role, str) and isinstance(content, str):
            role = role.strip().lower()
            return ROLES.get(role, role), content
    return None


def turns(value: Any, field: str, where: str) -> list[tuple[str, str]]:
    """``(role, content)`` turns of a non-empty list of turns (or of JSON text of one)."""
    value = parsed(value)
    if not isinstance(value, list) or not value:
        raise DataFileError(f"{where}: field '{field}' must be a non-empty list of "
                            "{role, content} (or ShareGPT {from, value}) turns.")
    out = []
    for i, item in enumerate(value):
        turn = _turn(item)
        if turn is None:
            raise DataFileError(f"{where}: {field}[{i}] needs string 'role' and 'content' "
                                "fields (or ShareGPT 'from' and 'value').")
        out.append(turn)
    return out


def as_turns(value: Any, field: str, where: str, role: str) -> list[tuple[str, str]]:
    """Turns of a list of turns, of one turn object, or of plain text (one ``role`` turn)."""
    value = parsed(value)
    if isinstance(value, str):
        return [(role, value)]
    if not isinstance(value, dict):
        return turns(value, field, where)
    turn = _turn(value)
    if turn is None:
        raise DataFileError(f"{where}: field '{field}' needs string 'role' and 'content' "
                            "fields (or ShareGPT 'from' and 'value').")
    return [turn]


def with_system(record: Record, prompt: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """``prompt`` with the record's top-level ``system`` text (LLaMA-Factory's ShareGPT layout)
    as its first turn, unless it has a system turn already or the record has no such text."""
    system = record.get("system")
    if not isinstance(system, str) or not system.strip() or any(r == "system" for r, _ in prompt):
        return prompt
    return [("system", system), *prompt]
