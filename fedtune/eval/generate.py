"""Batched greedy generation (left padding) and exact-match scoring."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fedtune.data.example import Example
from fedtune.data.template import render_prompt


def normalize_answer(text: str) -> str:
    return " ".join(text.strip().split()).lower()


@torch.no_grad()
def generate(model: torch.nn.Module, tokenizer, prompts: Sequence[str], max_new_tokens: int = 16,
             batch_size: int = 32) -> list[str]:
    """Greedy continuations of ``prompts`` (special tokens stripped)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    outputs: list[str] = []
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = list(prompts[start:start + batch_size])
            ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in chunk]
            if tokenizer.bos_token_id is not None:
                ids = [[tokenizer.bos_token_id] + x for x in ids]
            enc = tokenizer.pad({"input_ids": ids}, return_tensors="pt").to(device)
            out = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            new = out[:, enc["input_ids"].shape[1]:]
            outputs += tokenizer.batch_decode(new, skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return outputs


def exact_match(model: torch.nn.Module, tokenizer, examples: Sequence[Example],
                max_new_tokens: int = 16, batch_size: int = 32) -> dict[str, float]:
    """Fraction of examples whose normalized greedy answer equals the reference, overall and
    per category (keys ``exact_match`` and ``exact_match/<category>``)."""
    answers = generate(model, tokenizer, [render_prompt(e) for e in examples], max_new_tokens,
                       batch_size)
    hits: dict[str, list[float]] = {}
    for ex, ans in zip(examples, answers, strict=True):
        ok = float(normalize_answer(ans) == normalize_answer(ex.output))
        hits.setdefault("exact_match", []).append(ok)
        if ex.category:
            hits.setdefault(f"exact_match/{ex.category}", []).append(ok)
    return {k: sum(v) / len(v) for k, v in hits.items()}
