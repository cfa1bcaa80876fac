"""Tokenization with prompt masking, truncation accounting and padding.

The prompt and the response are tokenized separately and concatenated, so the boundary
between them is exact for every tokenizer (no response-template matching). Labels are -100
on prompt and padding tokens. An example whose response does not fit in ``max_len`` after
its prompt is dropped and counted: it would otherwise give all-masked labels and a NaN loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from fedtune.data.example import Example
from fedtune.data.template import render_prompt

IGNORE_INDEX = -100


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    prompt_len: int


@dataclass
class EncodedSet:
    items: list[Encoded] = field(default_factory=list)
    dropped: int = 0  # examples whose response was truncated away

    def __len__(self) -> int:
        return len(self.items)


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_example(tokenizer, example: Example, max_len: int) -> Encoded | None:
    """BOS + prompt + response + EOS, cut to ``max_len``; ``None`` if no response token fits."""
    prompt = _ids(tokenizer, render_prompt(example))
    if tokenizer.bos_token_id is not None:
        prompt = [tokenizer.bos_token_id] + prompt
    response = _ids(tokenizer, example.output) + [tokenizer.eos_token_id]
    if len(prompt) >= max_len:
        return None
    ids = (prompt + response)[:max_len]
    labels = [IGNORE_INDEX] * len(prompt) + ids[len(prompt):]
    return Encoded(input_ids=ids, labels=labels, prompt_len=len(prompt))


def encode_examples(tokenizer, examples: Sequence[Example], max_len: int) -> EncodedSet:
    out = EncodedSet()
    for ex in examples:
        enc = encode_example(tokenizer, ex, max_len)
        if enc is None:
            out.dropped += 1
        else:
            out.items.append(enc)
    return out


def collate(items: Sequence[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch for training / loss evaluation."""
    width = max(len(it.input_ids) for it in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for row, it in enumerate(items):
        n = len(it.input_ids)
        ids[row, :n] = torch.tensor(it.input_ids)
        labels[row, :n] = torch.tensor(it.labels)
        mask[row, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}
