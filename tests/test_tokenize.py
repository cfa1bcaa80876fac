import math

import torch

from fedtune.data.example import Example
from fedtune.data.template import render_prompt
from fedtune.data.tokenize import IGNORE_INDEX, collate, encode_example, encode_examples
from fedtune.models import choose_placement, load_model, load_tokenizer

EX = Example(instruction="Give the first word.", input="red fox owl", output="red fox owl red")


def test_prompt_tokens_are_masked_and_response_plus_eos_is_labelled():
    tok = load_tokenizer("tiny")
    enc = encode_example(tok, EX, max_len=128)
    prompt_ids = tok(render_prompt(EX), add_special_tokens=False)["input_ids"]
    response_ids = tok(EX.output, add_special_tokens=False)["input_ids"]
    assert enc.prompt_len == len(prompt_ids) + 1  # + BOS
    assert enc.labels[: enc.prompt_len] == [IGNORE_INDEX] * enc.prompt_len
    assert enc.labels[enc.prompt_len :] == response_ids + [tok.eos_token_id]
    assert enc.input_ids[enc.prompt_len :] == response_ids + [tok.eos_token_id]


def test_truncation_keeps_some_response_or_drops_and_counts():
    tok = load_tokenizer("tiny")
    full = encode_example(tok, EX, max_len=128)
    cut = encode_example(tok, EX, max_len=full.prompt_len + 2)
    assert len(cut.input_ids) == full.prompt_len + 2
    assert sum(lbl != IGNORE_INDEX for lbl in cut.labels) == 2
    assert encode_example(tok, EX, max_len=full.prompt_len) is None  # response cut away
    data = encode_examples(tok, [EX, EX], max_len=full.prompt_len)
    assert len(data) == 0 and data.dropped == 2


def test_batch_loss_is_finite_and_padding_ignored():
    tok = load_tokenizer("tiny")
    short = Example(instruction="Is the number even or odd?", input="7", output="odd")
    data = encode_examples(tok, [EX, short], max_len=128)
    batch = collate(data.items, tok.pad_token_id)
    assert batch["attention_mask"][1].sum() < batch["attention_mask"][0].sum()
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()
    model = load_model("tiny", choose_placement("cpu", "float32"))
    loss = model(**batch).loss
    assert math.isfinite(loss.item())
    assert torch.equal(
        batch["input_ids"][1, len(data.items[1].input_ids) :],
        torch.full_like(batch["input_ids"][1, len(data.items[1].input_ids) :], tok.pad_token_id),
    )
