"""The two record types a split hands out, examples and pairs: how each is read and labelled.

For each: how a file or hub dataset is read, how a built-in (synthetic) example becomes one, and
its value of a ``partition-by`` field.

``partition-by`` names an :class:`Example` field. A preference pair is labelled as the example
its prompt stands for, with the chosen response as the output:

- ``category``: the pair's category (``data-fields`` can map it: ``category=<field>``);
- ``instruction``: the prompt's instruction: the whole prompt of a plain-text prompt (standard
  and hh-rlhf pairs), the last user turn of a conversational one, a built-in task's instruction;
- ``input``: the prompt's input: the earlier turns of a conversational prompt, a built-in
  task's input; empty for a plain-text prompt (so partitioning plain-text pairs by ``input``
  is an error that says so);
- ``output``: the chosen response.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from fedtune.data.example import Example
from fedtune.data.instructions import read_examples
from fedtune.data.preference import PreferenceExample, read_pairs, synthetic_pair

T = TypeVar("T")


@dataclass(frozen=True)
class RecordType(Generic[T]):
    """One kind of record: ``examples`` or ``pairs``."""

    name: str
    read: Callable[[str | Path, str], list[T]]  # every record of a file or hub dataset
    from_builtin: Callable[[Example, int], T]  # a built-in example (and the seed) -> a record
    label: Callable[[T, str], str]  # a record's value of a partition-by field
    fields_hint: str  # how to give records a label, for the error when none has one
    # Kept so every existing split of pairs stays identical: pairs were always shuffled before
    # partitioning, also when the held-out set is separate (examples keep the file order then).
    shuffle_separate_pool: bool = False

    def labels(self, records: Sequence[T], by: str) -> list[str]:
        return [self.label(r, by) for r in records]


def _example_label(example: Example, by: str) -> str:
    return str(getattr(example, by))


def _pair_label(pair: PreferenceExample, by: str) -> str:
    if by == "category":
        return pair.category
    if by == "output":
        return pair.chosen
    if pair.instruction is None:  # a plain-text prompt: all instruction, no input
        return pair.prompt if by == "instruction" else ""
    return str(getattr(pair.instruction, by))


def _read_pairs(source: str | Path, fields: str) -> list[PreferenceExample]:
    return read_pairs(source, fields).pairs


def _same(example: Example, seed: int) -> Example:
    return example


EXAMPLES: RecordType[Example] = RecordType(
    "examples", read_examples, _same, _example_label,
    "map a field to it with data-fields (e.g. '{by}=topic') or use partition=iid.")
PAIRS: RecordType[PreferenceExample] = RecordType(
    "pairs", _read_pairs, synthetic_pair, _pair_label,
    "pairs are labelled by category (data-fields 'category=<field>'), the prompt's "
    "instruction or input, or the chosen response (output); partition by a field that your "
    "pairs have, or use partition=iid.",
    shuffle_separate_pool=True)
