"""Tokenization with prompt masking, truncation accounting and padding.

The prompt and the response are tokenized separately and concatenated, so the boundary
between them is exact for every tokenizer (no response-template matching). Labels are -100
on prompt and padding tokens. An example whose response does not fit in ``max_len`` after
its prompt is dropped and counted: it would otherwise give all-masked labels and a NaN loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

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


def prompt_ids(tokenizer, example: Example) -> list[int]:
    text = render_prompt(example, tokenizer)
    ids = _ids(tokenizer, text)
    has_bos = tokenizer.bos_token is not None and text.startswith(tokenizer.bos_token)
    return [tokenizer.bos_token_id] + ids if tokenizer.bos_token_id is not None and not has_bos \
        else ids


def fit_prompt(tokenizer, example: Example, budget: int) -> Example:
    """Shorten the instruction (a task definition, say), never the input, until the prompt
    takes at most ``budget`` tokens; unchanged when it fits. If even an empty instruction does
    not fit, the instruction is emptied and the caller decides (drop and count).

    Natural Instructions definitions alone can exceed a small model's context; the instance
    input is what the answer depends on, so the definition gives way first.
    """
    over = len(prompt_ids(tokenizer, example)) - budget
    words = _ids(tokenizer, example.instruction)
    cut = over
    while over > 0 and cut < len(words):
        text = tokenizer.decode(words[: len(words) - cut], skip_special_tokens=True).rstrip()
        trial = replace(example, instruction=text)
        over = len(prompt_ids(tokenizer, trial)) - budget
        if over <= 0:
            return trial
        cut += over  # strictly more each time: terminates
    return example if over <= 0 else replace(example, instruction="")


def encode_example(tokenizer, example: Example, max_len: int) -> Encoded | None:
    """BOS + prompt + response + EOS, cut to ``max_len``; ``None`` if no response token fits.

    When prompt + response do not fit, the instruction gives way first (:func:`fit_prompt`), so
    that the response keeps up to a quarter of ``max_len``; then the response is cut.
    """
    response = _ids(tokenizer, example.output) + [tokenizer.eos_token_id]
    example = fit_prompt(tokenizer, example, max_len - min(len(response), max(1, max_len // 4)))
    prompt = prompt_ids(tokenizer, example)
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
