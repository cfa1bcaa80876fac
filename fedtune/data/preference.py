"""Preference pairs (DPO) from a data file or hub dataset, one per record; the built-in pairs.

Record layouts, detected per record:

- standard: ``prompt``, ``chosen``, ``rejected`` strings; the prompt is used as written.
- conversational: ``chosen`` and ``rejected`` are lists of ``{role, content}`` turns, with a
  ``prompt`` list of turns or, without one, their shared leading turns as the prompt; the prompt
  is rendered with the tokenizer's chat template (the Alpaca template if it has none).
- ShareGPT (LLaMA-Factory's ``sharegpt`` preference layout): a ``conversations`` list of
  ``{from, value}`` turns (``human``/``gpt``/``system``) is the prompt, and ``chosen`` and
  ``rejected`` are single ``{from, value}`` turns; the same with an OpenAI-style ``messages``
  list of ``{role, content}`` turns. A top-level ``system`` text becomes the first turn. With a
  ``conversations``/``messages`` prompt, ``chosen`` and ``rejected`` may also be plain text,
  single turns or lists of turns.
- hh-rlhf: ``chosen`` and ``rejected`` are full dialogues ``"\\n\\nHuman: ... \\n\\nAssistant:
  ..."`` and no prompt; their shared text up to the last ``Assistant:`` is the prompt.
- anything else: map the fields with ``data-fields``, e.g. ``"prompt=question,chosen=good,
  rejected=bad"``; a field may be a dotted path (``chosen=chosen.value``).

As for instruction examples, a conversational prompt's last user turn is the ``instruction``
and its other turns (the system turn included) the context; a multi-turn response is its turns'
text joined by newlines.
Missing or empty fields raise one sentence naming the file and line; pairs whose chosen and
rejected responses are identical carry no preference, and dialogues whose last assistant turn
is empty have no response: both are counted, logged (with the first line) and skipped.
The built-in data (``data=builtin``) pairs each synthetic task's correct answer with a
plausible wrong one of the same format (:func:`fedtune.data.synthetic.wrong_answer`).
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedtune.data import synthetic
from fedtune.data.example import Example
from fedtune.data.fields import as_turns, present, text, value_at, with_system
from fedtune.data.readers import DataFileError, Record, source_records
from fedtune.data.template import render_prompt

log = logging.getLogger("fedtune")

MARKER = "Assistant:"  # hh-rlhf: the prompt ends with the last assistant turn's marker
DIALOGUES = ("conversations", "messages")  # a prompt's turns: ShareGPT, OpenAI


@dataclass(frozen=True)
class PreferenceExample:
    """A prompt with a preferred (``chosen``) and a dispreferred (``rejected``) response.

    The prompt is either ``prompt`` (raw text, used as is) or ``instruction`` (an
    :class:`Example` rendered with the prompt template, or with the chat template when it has
    ``messages``).
    """

    chosen: str
    rejected: str
    prompt: str = ""
    instruction: Example | None = None
    category: str = ""

    def prompt_text(self, tokenizer=None) -> str:
        if self.instruction is not None:
            return render_prompt(self.instruction, tokenizer)
        return self.prompt

    def uses_chat_template(self, tokenizer) -> bool:
        return bool(self.instruction is not None and self.instruction.messages
                    and getattr(tokenizer, "chat_template", None))


@dataclass
class PairList:
    """Pairs read from a source, and how many identical pairs were skipped."""

    pairs: list[PreferenceExample]
    identical: int = 0
    empty: int = 0  # dialogues whose last assistant turn is empty


# ---- records -> pairs ---------------------------------------------------------------------
def _get(record: Record, names: dict[str, str], target: str) -> Any:
    return value_at(record, names.get(target, target))


def _field(record: Record, names: dict[str, str], target: str, where: str) -> Any:
    value = _get(record, names, target)
    if value is None:
        raise DataFileError(
            f"{where}: field '{names.get(target, target)}' is missing (the record has "
            f"{present(record)}); a preference record needs 'chosen' and 'rejected' (and "
            "'prompt' or 'conversations' unless they are full hh-rlhf dialogues), or set "
            "data-fields, e.g. 'prompt=question,chosen=good,rejected=bad'.")
    return value


def _prompt_source(record: Record, names: dict[str, str]) -> tuple[str, Any]:
    """(field, value) of the prompt: ``prompt`` (or its mapping), else a turn list
    (``conversations``, ``messages``) unless ``prompt`` is mapped; value ``None`` if none."""
    name = names.get("prompt", "prompt")
    value = value_at(record, name)
    if value is not None or "prompt" in names:
        return name, value
    return next(((f, record[f]) for f in DIALOGUES if record.get(f) is not None), (name, None))


class EmptyTurn(DataFileError):
    """A dialogue whose last assistant turn is empty (real hh-rlhf data has a few): such a
    pair is counted and skipped, not fatal, since the record's fields themselves are there."""


def _nonempty(response: str, what: str, where: str) -> str:
    if not response.strip():
        raise DataFileError(f"{where}: the {what} response is empty; give it text or remove "
                            "the record.")
    return response


def _string(value: Any, name: str, where: str) -> str:
    content = text(value)
    if content is None:
        raise DataFileError(f"{where}: field '{name}' is a {type(value).__name__}, not text; "
                            "give it a string (or, for chat data, a list of turns).")
    return content


def _hh_split(chosen: str, rejected: str, where: str) -> tuple[str, str, str]:
    """(prompt, chosen response, rejected response) of two hh-rlhf dialogues."""
    common = os.path.commonprefix([chosen, rejected])
    cut = common.rfind(MARKER)
    if cut < 0:
        raise DataFileError(f"{where}: the record has no 'prompt' field and its chosen and "
                            f"rejected texts share no '{MARKER}' turn; add a 'prompt' field or "
                            "map one with data-fields (prompt=<field>).")
    end = cut + len(MARKER)
    return chosen[:end], chosen[end:], rejected[end:]


def _shared_prompt(chosen: list[tuple[str, str]], rejected: list[tuple[str, str]]
                   ) -> tuple[list[tuple[str, str]], ...]:
    """(prompt, chosen, rejected): an implicit prompt is the leading turns both dialogues
    share (at least one turn of each is left as its response)."""
    shared = 0
    while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
        shared += 1
    return chosen[:shared], chosen[shared:], rejected[shared:]


def _chat_pair(record: Record, names: dict[str, str], where: str,
               category: str) -> PreferenceExample:
    chosen = as_turns(_field(record, names, "chosen", where), names.get("chosen", "chosen"),
                      where, "assistant")
    rejected = as_turns(_field(record, names, "rejected", where),
                        names.get("rejected", "rejected"), where, "assistant")
    prompt_name, prompt_value = _prompt_source(record, names)
    if prompt_value is not None:
        prompt = as_turns(prompt_value, prompt_name, where, "user")
    else:
        prompt, chosen, rejected = _shared_prompt(chosen, rejected)
    if not prompt:
        raise DataFileError(f"{where}: the conversation has no prompt turn before the "
                            "responses; give a 'prompt' (or 'conversations') list of turns.")
    prompt = with_system(record, prompt)
    users = [i for i, (role, _) in enumerate(prompt) if role == "user"]
    main = users[-1] if users else len(prompt) - 1
    history = "\n".join(f"{r}: {c}" for i, (r, c) in enumerate(prompt) if i != main)
    instruction = Example(instruction=prompt[main][1], output="", input=history,
                          category=category, messages=tuple(prompt))
    return PreferenceExample(
        chosen=_nonempty("\n".join(c for _, c in chosen), "chosen", where),
        rejected=_nonempty("\n".join(c for _, c in rejected), "rejected", where),
        instruction=instruction, category=category)


def _is_chat(record: Record, names: dict[str, str]) -> bool:
    """Chat turns in the responses, or a turn list (``conversations``, ``messages``) as the
    prompt."""
    if any(isinstance(_get(record, names, t), list | dict) for t in ("chosen", "rejected")):
        return True
    _, prompt = _prompt_source(record, names)
    return isinstance(prompt, list)


def to_pair(record: Any, where: str, names: dict[str, str] | None = None) -> PreferenceExample:
    """One record -> a :class:`PreferenceExample`; ``where`` (``"file: line 3"``) prefixes
    errors; ``names`` maps prompt/chosen/rejected/category to the record's field names (or
    dotted paths)."""
    names = names or {}
    if not isinstance(record, dict):
        raise DataFileError(f"{where} is not an object with fields; each preference record "
                            "needs 'chosen' and 'rejected' fields.")
    chosen = _field(record, names, "chosen", where)
    cat = _get(record, names, "category")
    category = text(cat) or "" if cat is not None else ""
    if _is_chat(record, names):
        return _chat_pair(record, names, where, category)
    chosen = _string(chosen, names.get("chosen", "chosen"), where)
    rejected = _string(_field(record, names, "rejected", where),
                       names.get("rejected", "rejected"), where)
    prompt_name, prompt_value = _prompt_source(record, names)
    if prompt_value is None:
        if "prompt" in names:
            _field(record, names, "prompt", where)  # mapped but absent: say so
        prompt, chosen, rejected = _hh_split(chosen, rejected, where)
        if not chosen.strip() or not rejected.strip():
            raise EmptyTurn(f"{where}: the last assistant turn is empty")
    else:
        prompt = _string(prompt_value, prompt_name, where)
    return PreferenceExample(chosen=_nonempty(chosen, "chosen", where),
                             rejected=_nonempty(rejected, "rejected", where),
                             prompt=prompt, category=category)


def read_pairs(source: str | Path, fields: str | dict[str, str] = "") -> PairList:
    """Every usable pair of a data file or hub dataset (identical pairs counted, skipped)."""
    records, fields = source_records(source, fields)
    out = PairList([])
    first, first_empty = "", ""
    for where, record in records:
        try:
            pair = to_pair(record, f"{source}: {where}", fields)
        except EmptyTurn:
            out.empty += 1
            first_empty = first_empty or where
            continue
        if pair.chosen.strip() == pair.rejected.strip():
            out.identical += 1
            first = first or where
            continue
        out.pairs.append(pair)
    if out.identical:
        log.warning(f"{source}: {out.identical} pair(s) have identical chosen and rejected "
                    f"responses (first at {first}) and carry no preference; skipped them.")
    if out.empty:
        log.warning(f"{source}: {out.empty} dialogue(s) end with an empty assistant turn "
                    f"(first at {first_empty}); skipped them.")
    if not out.pairs:
        raise DataFileError(f"{source}: no usable preference pairs (records: "
                            f"{out.identical} identical pairs); give pairs whose chosen and "
                            "rejected responses differ.")
    return out


# ---- built-in pairs ----------------------------------------------------------------------
def synthetic_pair(example: Example, seed: int) -> PreferenceExample:
    """The correct answer (chosen) against a plausible wrong one of the same format."""
    gen = random.Random(f"pref-{seed}-{example.category}-{example.input}")
    wrong = synthetic.wrong_answer(example.category, example.input, example.output, gen)
    return PreferenceExample(chosen=example.output, rejected=wrong, instruction=example,
                             category=example.category)
