import math

import torch

from fedtune.data.example import Example
from fedtune.data.template import render_prompt
from fedtune.data.tokenize import IGNORE_INDEX, collate, encode_example, encode_examples
from fedtune.models.loading import choose_placement, load_model, load_tokenizer

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


def test_truncation_cuts_instruction_then_response_then_drops_and_counts():
    tok = load_tokenizer("tiny")
    full = encode_example(tok, EX, max_len=128)
    n_resp = len(full.input_ids) - full.prompt_len
    # short of room: the instruction gives way so the whole (short) response still fits
    cut = encode_example(tok, EX, max_len=len(full.input_ids) - 2)
    assert len(cut.input_ids) <= len(full.input_ids) - 2
    assert cut.labels[cut.prompt_len:] == full.labels[full.prompt_len:]
    # the input alone (no instruction left) leaves room for a quarter: the response is cut
    no_inst = encode_example(tok, Example("", EX.output, EX.input), max_len=128)
    tight = no_inst.prompt_len + 2
    enc = encode_example(tok, EX, max_len=tight)
    assert len(enc.input_ids) == tight and sum(x != IGNORE_INDEX for x in enc.labels) == 2 < n_resp
    # an input longer than the context: dropped and counted, never an all-masked row
    huge = Example("Copy.", output="x", input="red fox " * 100)
    data = encode_examples(tok, [huge, EX], max_len=64)
    assert len(data) == 1 and data.dropped == 1
    assert all(any(x != IGNORE_INDEX for x in it.labels) for it in data.items)


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


def test_long_definition_is_cut_not_the_input():
    tok = load_tokenizer("tiny")
    long = Example(instruction="Give the first word. " * 40, input="red fox owl", output="red")
    full = encode_example(tok, long, max_len=512)
    enc = encode_example(tok, long, max_len=60)
    assert full.prompt_len > 60 and enc is not None and len(enc.input_ids) <= 60
    text = tok.decode(enc.input_ids)
    assert "red fox owl" in text and text.count("Give the first word.") < 40
    assert enc.labels[enc.prompt_len:] == full.labels[full.prompt_len:]  # whole response kept


def test_chat_examples_use_the_tokenizer_chat_template():
    import copy

    tok = copy.deepcopy(load_tokenizer("tiny"))
    chat = Example(instruction="Give the first word.", output="red",
                   messages=(("system", "Be brief."), ("user", "Give the first word.")))
    alpaca = tok.decode(encode_example(tok, chat, 128).input_ids)
    assert "### Instruction:" in alpaca  # no template: the Alpaca fallback
    tok.chat_template = ("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n"
                         "{% endfor %}{% if add_generation_prompt %}[assistant] {% endif %}")
    enc = encode_example(tok, chat, 128)
    text = tok.decode(enc.input_ids)
    assert "[system] Be brief." in text and "[user] Give the first word." in text
    assert text.rstrip().endswith("red</s>") and "### Instruction" not in text
    assert enc.input_ids.count(tok.bos_token_id) == 1
