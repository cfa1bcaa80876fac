"""Preference data: layouts, errors naming file and line, identical pairs, built-in pairs,
tokenized pairs."""

from __future__ import annotations

import json
import logging
from collections import Counter

import pytest

from fedtune.data.pairs import collate_pairs, encode_pairs
from fedtune.data.preference import PreferenceExample, read_pairs
from fedtune.data.readers import DataFileError
from fedtune.data.split import PAIRS, split
from fedtune.models.loading import load_tokenizer
from tests.conftest import SHARED, small_config

HH = SHARED / "data" / "hh-rlhf" / "harmless-base" / "test.jsonl.gz"


def _write(tmp_path, records, name="prefs.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_standard_conversational_hh_and_mapped_layouts(tmp_path):
    path = _write(tmp_path, [
        {"prompt": "Say hi.", "chosen": "hi", "rejected": "bye"},
        {"prompt": [{"role": "user", "content": "Say hi."}],
         "chosen": [{"role": "assistant", "content": "hi"}],
         "rejected": [{"role": "assistant", "content": "bye"}]},
        {"chosen": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A"}],
         "rejected": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "B"}]},
        {"chosen": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how?\n\nAssistant: well",
         "rejected": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how?\n\nAssistant: go away"},
    ])
    std, chat, implicit, hh = read_pairs(path).pairs
    assert (std.prompt, std.chosen, std.rejected) == ("Say hi.", "hi", "bye")
    assert chat.instruction.messages == (("user", "Say hi."),) and chat.chosen == "hi"
    assert implicit.instruction.instruction == "Q?" and implicit.rejected == "B"
    assert hh.prompt == "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how?\n\nAssistant:"
    assert (hh.chosen, hh.rejected) == (" well", " go away")
    mapped = _write(tmp_path, [{"q": "2+2?", "good": "4", "bad": "5"}], "m.jsonl")
    (pair,) = read_pairs(mapped, "prompt=q,chosen=good,rejected=bad").pairs
    assert (pair.prompt, pair.chosen, pair.rejected) == ("2+2?", "4", "5")


@pytest.mark.parametrize("record,words", [
    ({"prompt": "p", "chosen": "a"}, ["line 2", "'rejected' is missing"]),
    ({"prompt": "p", "chosen": "  ", "rejected": "b"}, ["line 2", "chosen response is empty"]),
    ({"chosen": "plain a", "rejected": "plain b"}, ["line 2", "no 'prompt' field"]),
])
def test_bad_records_name_file_and_line(tmp_path, record, words):
    path = _write(tmp_path, [{"prompt": "p", "chosen": "a", "rejected": "b"}, record])
    with pytest.raises(DataFileError) as err:
        read_pairs(path)
    message = str(err.value)
    assert str(path) in message and all(w in message for w in words)
    assert message.count(".") >= 1 and "\n" not in message


def test_identical_pairs_are_counted_skipped_and_logged(tmp_path, caplog):
    path = _write(tmp_path, [{"prompt": "p", "chosen": "a", "rejected": "b"},
                             {"prompt": "p", "chosen": "same", "rejected": "same"},
                             {"prompt": "q", "chosen": "x ", "rejected": "x"}])
    with caplog.at_level(logging.WARNING, logger="fedtune"):
        got = read_pairs(path)
    assert len(got.pairs) == 1 and got.identical == 2
    assert "line 2" in caplog.text and "2 pair(s)" in caplog.text


def test_builtin_pairs_prefer_the_correct_answer_of_the_same_format():
    cfg = small_config(objective="dpo").data
    mine = split(cfg, PAIRS, "train", 0, 0, 4)
    pairs = mine + split(cfg, PAIRS, "train", 0, 2, 4) + split(cfg, PAIRS, "server", 0)
    for p in pairs:
        assert p.chosen == p.instruction.output and p.rejected != p.chosen
        if p.category in ("larger", "next"):
            assert p.rejected.isdigit()
    lengths = Counter(len(p.chosen) for p in pairs), Counter(len(p.rejected) for p in pairs)
    assert abs(sum(k * v for k, v in lengths[0].items()) - sum(
        k * v for k, v in lengths[1].items())) / len(pairs) < 0.5  # no length shortcut
    held = {(p.category, p.instruction.input) for p in split(cfg, PAIRS, "server", 0)}
    assert not held & {(p.category, p.instruction.input) for p in mine}


def test_encoding_keeps_the_response_boundary_and_the_prompt_end():
    tok = load_tokenizer("tiny")
    long_prompt = "Human: " + "red blue " * 200 + "\n\nAssistant:"
    pairs = [PreferenceExample(prompt="Is 4 even?", chosen="even", rejected="odd"),
             PreferenceExample(prompt=long_prompt, chosen=" yes", rejected=" no"),
             PreferenceExample(prompt="p", chosen="a" * 300 + "b", rejected="a" * 300 + "c")]
    data = encode_pairs(tok, pairs, 64)
    assert len(data) == 2 and data.dropped == 1  # the third differs only past the cut
    short, cut = data.items
    assert short.chosen[-1] == tok.eos_token_id and short.prompt[0] == tok.bos_token_id
    assert len(cut.prompt) + len(cut.chosen) <= 64
    assert tok.decode(list(cut.prompt)).endswith("Assistant:")
    batch = collate_pairs(data.items, tok.pad_token_id)
    assert batch["input_ids"].shape[0] == 4
    assert (batch["labels"][0] != -100).sum() == len(short.chosen)
    assert (batch["labels"][2] != -100).sum() == len(short.rejected)


def test_hh_rlhf_file_reads_and_encodes():
    if not HH.exists():
        pytest.skip("../shared/data/hh-rlhf is not available")
    got = read_pairs(HH)
    assert len(got.pairs) + got.identical + got.empty == 2312 and got.empty == 4
    assert all(p.prompt.endswith("Assistant:") and p.chosen.strip() for p in got.pairs[:200])
