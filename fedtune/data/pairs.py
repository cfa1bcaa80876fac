"""Tokenized preference pairs: prompt, chosen and rejected token ids, and batches of them.

As for SFT (:mod:`fedtune.data.tokenize`), prompt and responses are tokenized separately and
concatenated, so the response boundary is exact: BOS + prompt, then each response + EOS (with
a chat template, the template's own end of turn instead). Too long a pair keeps the end of its
prompt (the latest turns of a dialogue) and the start of its responses; a pair whose responses
become identical when cut carries no preference and is dropped and counted.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from fedtune.data.preference import PreferenceExample
from fedtune.data.tokenize import Encoded, collate


@dataclass(frozen=True)
class EncodedPair:
    prompt: tuple[int, ...]
    chosen: tuple[int, ...]  # response tokens, EOS included
    rejected: tuple[int, ...]


@dataclass
class PairSet:
    items: list[EncodedPair] = field(default_factory=list)
    dropped: int = 0  # pairs that lost every response token or their difference when cut

    def __len__(self) -> int:
        return len(self.items)

    def fingerprint(self) -> str:
        """sha256 of every pair's token ids (keys the cache of reference log-probs)."""
        h = hashlib.sha256()
        for it in self.items:
            for part in (it.prompt, it.chosen, it.rejected):
                h.update(np.asarray(part, dtype=np.int64).tobytes() + b"|")
        return h.hexdigest()


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _responses(tokenizer, pair: PreferenceExample, prompt: str) -> tuple[list[int], list[int]]:
    if pair.uses_chat_template(tokenizer):
        turns = pair.instruction.chat()  # type: ignore[union-attr]

        def completion(text: str) -> list[int]:
            full = tokenizer.apply_chat_template(
                turns + [{"role": "assistant", "content": text}], tokenize=False)
            return _ids(tokenizer, full[len(prompt):] if full.startswith(prompt) else text)

        return completion(pair.chosen), completion(pair.rejected)
    eos = [tokenizer.eos_token_id]
    return _ids(tokenizer, pair.chosen) + eos, _ids(tokenizer, pair.rejected) + eos


def encode_pair(tokenizer, pair: PreferenceExample, max_len: int) -> EncodedPair | None:
    """Token ids of one pair within ``max_len`` per sequence; ``None`` if nothing is left to
    prefer (responses identical after truncation)."""
    text = pair.prompt_text(tokenizer)
    prompt = _ids(tokenizer, text)
    bos = tokenizer.bos_token_id
    if bos is not None and prompt[:1] != [bos]:
        prompt = [bos] + prompt
    chosen, rejected = _responses(tokenizer, pair, text)
    keep = min(max(len(chosen), len(rejected)), max(max_len - len(prompt), max_len // 2))
    chosen, rejected = chosen[:keep], rejected[:keep]
    room = max_len - keep
    if len(prompt) > room:  # keep BOS and the end of the prompt
        prompt = prompt[:1] + prompt[len(prompt) - room + 1:] if bos is not None else \
            prompt[len(prompt) - room:]
    if chosen == rejected or not chosen or not rejected:
        return None
    return EncodedPair(tuple(prompt), tuple(chosen), tuple(rejected))


def encode_pairs(tokenizer, pairs: Sequence[PreferenceExample], max_len: int) -> PairSet:
    out = PairSet()
    for pair in pairs:
        enc = encode_pair(tokenizer, pair, max_len)
        if enc is None:
            out.dropped += 1
        else:
            out.items.append(enc)
    return out


def collate_pairs(items: Sequence[EncodedPair], pad_id: int) -> dict[str, torch.Tensor]:
    """A right-padded batch of 2B rows: the B chosen sequences, then the B rejected ones;
    ``labels`` are the response tokens (-100 elsewhere)."""
    def row(prompt: tuple[int, ...], response: tuple[int, ...]) -> Encoded:
        return Encoded(list(prompt + response), [-100] * len(prompt) + list(response),
                       len(prompt))

    rows = [row(it.prompt, it.chosen) for it in items]
    rows += [row(it.prompt, it.rejected) for it in items]
    return collate(rows, pad_id)
