"""Batched greedy generation (left padding) and exact-match scoring."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from rapidfuzz.distance import LCSseq
from rouge_score import scoring, tokenize

from fedtune.data.example import Example
from fedtune.data.template import render_prompt
from fedtune.data.tokenize import fit_prompt, prompt_ids


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
            bos = tokenizer.bos_token_id
            if bos is not None:  # as in training; a chat template may have written it already
                ids = [x if x[:1] == [bos] else [bos] + x for x in ids]
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


def rouge_l(prediction: str, reference: str) -> float:
    """Rouge-L F-measure, as ``rouge-score``'s ``RougeScorer(["rougeL"])`` gives it, bit for
    bit: its tokenizer (lower-cased alphanumeric tokens, no stemming) and its F-measure, over
    the longest common subsequence of the two token lists (rapidfuzz's ``LCSseq``). Not
    ``RougeScorer`` itself: its module imports nltk for a stemmer this score does not use,
    0.4 CPU-s in every process that evaluates (tests/test_eval.py checks the two agree)."""
    target, predicted = tokenize.tokenize(reference, None), tokenize.tokenize(prediction, None)
    if not target or not predicted:
        return 0.0
    ids: dict[str, int] = {}  # tokens as ints: rapidfuzz compares them exactly, not by hash
    lcs = LCSseq.similarity([ids.setdefault(t, len(ids)) for t in target],
                            [ids.setdefault(t, len(ids)) for t in predicted])
    return scoring.fmeasure(lcs / len(predicted), lcs / len(target))


def answer_metrics(model: torch.nn.Module, tokenizer, examples: Sequence[Example],
                   max_new_tokens: int = 16, batch_size: int = 32,
                   max_len: int | None = None) -> dict[str, float]:
    """Greedy answers scored by exact match (normalized) and Rouge-L F, overall and per
    category (keys ``exact_match``, ``rouge_l``, ``exact_match/<category>``, ...) plus the
    number of examples evaluated per category (``evaluated/<category>``).

    With ``max_len`` (the run's max-seq-len; the model's own context if that is shorter) the
    prompt and the ``max_new_tokens`` of the answer must fit it together: the instruction gives
    way first (:func:`fit_prompt`), and an example whose prompt still does not fit (its input
    alone is too long) is not generated nor scored but counted in ``eval_skipped`` (present
    only when some were)."""
    skipped = 0
    if max_len is not None:  # prompt + answer must fit the context: definitions give way
        context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        budget = min(max_len, context or max_len) - max_new_tokens
        fitted = [fit_prompt(tokenizer, e, budget) for e in examples]
        examples = [e for e in fitted if len(prompt_ids(tokenizer, e)) <= budget]
        skipped = len(fitted) - len(examples)
    prompts = [render_prompt(e, tokenizer) for e in examples]
    answers = generate(model, tokenizer, prompts, max_new_tokens, batch_size)
    scores: dict[str, list[float]] = {}
    for ex, ans in zip(examples, answers, strict=True):
        for name, value in (("exact_match",
                             float(normalize_answer(ans) == normalize_answer(ex.output))),
                            ("rouge_l", rouge_l(ans, ex.output))):
            scores.setdefault(name, []).append(value)
            if ex.category:
                scores.setdefault(f"{name}/{ex.category}", []).append(value)
    out = {k: sum(v) / len(v) for k, v in scores.items()}
    out.update({f"evaluated/{k.split('/', 1)[1]}": float(len(v))
                for k, v in scores.items() if k.startswith("exact_match/")})
    if skipped:
        out["eval_skipped"] = float(skipped)
    return out
