"""Every config key's one-line help, read from its dataclass's source: the field's trailing
``# comment``, else the comment lines right above it. The config reference
(``fedtune config --markdown``, the documentation site's "Config reference" page) is rendered
from these, so it cannot drift from the code. Torch-free, like the config itself."""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import io
import json
import re
import textwrap
import tokenize
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class KeyHelp:
    """One config key: its flat name, section, default and help."""

    key: str
    section: str
    default: Any
    help: str


@functools.cache
def field_comments(cls: type) -> dict[str, str]:
    """Field name -> its comment (trailing, else the comment block right above), one line."""
    source = textwrap.dedent(inspect.getsource(cls))
    comments: dict[int, str] = {}  # line -> comment text
    code_lines: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
        elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
                              tokenize.ENDMARKER):
            code_lines.update(range(tok.start[0], tok.end[0] + 1))
    body = ast.parse(source).body[0]
    assert isinstance(body, ast.ClassDef)
    out: dict[str, str] = {}
    for node in body.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        end = node.end_lineno or node.lineno
        trailing = [comments[n] for n in range(node.lineno, end + 1) if n in comments]
        if trailing:
            out[node.target.id] = " ".join(trailing)
            continue
        above: list[str] = []
        line = node.lineno - 1
        while line in comments and line not in code_lines:
            above.insert(0, comments[line])
            line -= 1
        out[node.target.id] = " ".join(above)
    return out


def key_help() -> list[KeyHelp]:
    """Every key of :class:`fedtune.config.Config`, in ``fedtune config``'s order."""
    from fedtune.config import SECTIONS, Config

    defaults = Config().to_flat()
    out = []
    for key, (section, f) in Config.keys().items():
        cls = _owner(SECTIONS[section], f)
        out.append(KeyHelp(key, section, defaults[key], field_comments(cls).get(f.name, "")))
    return out


def _owner(cls: type, f: dataclasses.Field) -> type:
    """The class in ``cls``'s MRO whose own source declares the field."""
    return next(c for c in cls.__mro__ if f.name in c.__dict__.get("__annotations__", {}))


def missing_help() -> list[str]:
    """Keys whose field carries no comment."""
    return [k.key for k in key_help() if not k.help]


def _cell(text: str) -> str:
    """Table-safe text: pipes and angle brackets escaped, Sphinx roles dropped."""
    text = re.sub(r":\w+:`([^`]+)`", r"`\1`", text)
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def markdown() -> str:
    """The config reference as a Markdown table, one row per key, grouped by section."""
    lines = ["| key | default | section | help |", "|---|---|---|---|"]
    for k in key_help():
        lines.append(f"| `{k.key}` | `{_cell(json.dumps(k.default))}` | {k.section} | "
                     f"{_cell(k.help)} |")
    return "\n".join(lines) + "\n"
