"""Conversation layouts: ShareGPT ``{from, value}`` and OpenAI ``{role, content}`` turn lists,
for SFT examples and preference pairs; dotted ``data-fields`` paths; one-sentence errors."""

from __future__ import annotations

import csv
import json

import pytest

from fedtune.config import Config, ConfigError
from fedtune.data.config import DataConfig
from fedtune.data.instructions import read_examples
from fedtune.data.preference import read_pairs
from fedtune.data.readers import DataFileError
from fedtune.data.records import EXAMPLES, PAIRS
from fedtune.data.split import split


def _jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _sg(role, value):
    return {"from": role, "value": value}


SHAREGPT = {"system": "Be brief.", "category": "colours", "conversations": [
    _sg("human", "Hi"), _sg("gpt", "Hello."), _sg("human", "Name a colour."), _sg("gpt", "Blue.")]}


def test_sharegpt_conversations_take_the_last_gpt_turn_as_the_response(tmp_path):
    (ex,) = read_examples(_jsonl(tmp_path / "sg.jsonl", [SHAREGPT]))
    assert (ex.instruction, ex.output, ex.category) == ("Name a colour.", "Blue.", "colours")
    assert ex.input == "system: Be brief.\nuser: Hi\nassistant: Hello."  # the context
    assert ex.chat() == [{"role": "system", "content": "Be brief."},
                         {"role": "user", "content": "Hi"},
                         {"role": "assistant", "content": "Hello."},
                         {"role": "user", "content": "Name a colour."}]


def test_openai_turns_under_conversations_or_messages_read_alike(tmp_path):
    turns = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q1"},
             {"role": "assistant", "content": "A1"}, {"role": "user", "content": "Q2"},
             {"role": "assistant", "content": "A2"}, {"role": "user", "content": "unanswered"}]
    sharegpt_turns = [{"from": {"user": "human", "assistant": "gpt"}.get(t["role"], t["role"]),
                       "value": t["content"]} for t in turns]
    path = _jsonl(tmp_path / "oa.jsonl", [{"conversations": turns}, {"messages": turns},
                                          {"conversations": sharegpt_turns}])
    examples = read_examples(path)
    assert len(set(examples)) == 1  # one layout, three spellings
    ex = examples[0]
    # the last assistant turn is the response; a trailing user turn has no answer: dropped
    assert (ex.instruction, ex.output) == ("Q2", "A2")
    assert [role for role, _ in ex.messages] == ["system", "user", "assistant", "user"]


def test_a_csv_cell_may_hold_the_turns_as_json(tmp_path):
    path = tmp_path / "chat.csv"
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["conversations", "category"])
        writer.writeheader()
        writer.writerow({"conversations": json.dumps(SHAREGPT["conversations"]),
                         "category": "c"})
    (ex,) = read_examples(path)
    assert (ex.instruction, ex.output, ex.category) == ("Name a colour.", "Blue.", "c")
    (one,) = read_examples(path, "instruction=conversations.0.value,output=conversations.1.value")
    assert (one.instruction, one.output) == ("Hi", "Hello.")


def test_data_fields_reach_nested_fields_with_dotted_paths(tmp_path):
    record = {"meta": {"topic": "t"}, **SHAREGPT}
    path = _jsonl(tmp_path / "sg.jsonl", [record])
    fields = ("instruction=conversations.-2.value,output=conversations.-1.value,"
              "input=conversations.0.value,category=meta.topic")
    (ex,) = read_examples(path, fields)
    assert (ex.instruction, ex.output, ex.input, ex.category) == (
        "Name a colour.", "Blue.", "Hi", "t")
    (chat,) = read_examples(_jsonl(tmp_path / "nested.jsonl", [{"chat": {"turns": SHAREGPT[
        "conversations"]}}]), "messages=chat.turns")
    assert chat.output == "Blue."
    Config.from_flat({"data-fields": fields})  # the config accepts the same option
    keyed = _jsonl(tmp_path / "keyed.jsonl", [{"q.text": "Q", "a": "A"}])
    (ex,) = read_examples(keyed, "instruction=q.text,output=a")  # a key with a dot is a key
    assert (ex.instruction, ex.output) == ("Q", "A")


def test_a_sharegpt_file_splits_among_clients(tmp_path):
    records = [{"conversations": [_sg("human", f"q{i}"), _sg("gpt", f"a{i}")]}
               for i in range(40)]
    cfg = DataConfig(data=str(_jsonl(tmp_path / "sg.jsonl", records)), eval_examples=8)
    held = split(cfg, EXAMPLES, "server", 0)
    train = [e for p in range(2) for e in split(cfg, EXAMPLES, "train", 0, p, 2)]
    assert len(held) == 8 and {e.output for e in held}.isdisjoint({e.output for e in train})
    assert all(e.output == "a" + e.instruction[1:] for e in held + train)


@pytest.mark.parametrize("record, words", [
    ({"conversations": [_sg("human", "Hi"), {"from": "gpt"}]},
     r"bad.jsonl: line 1: conversations\[1\] needs string 'role' and 'content' fields \(or "
     r"ShareGPT 'from' and 'value'\)"),
    ({"conversations": [_sg("human", "Hi")]},
     r"line 1: 'conversations' has no 'assistant' turn \(ShareGPT: 'gpt'\)"),
    ({"conversations": [_sg("system", "S"), _sg("gpt", "A")]},
     r"line 1: 'conversations' has no turn but system ones before its last assistant turn"),
    ({"conversations": "not turns"},
     r"line 1: field 'conversations' must be a non-empty list of \{role, content\}"),
    ({"conversations": [_sg("human", "Hi"), _sg("gpt", " ")]},
     r"line 1: conversations\[1\] \(the last assistant turn\) is empty"),
])
def test_malformed_conversations_name_file_line_and_field(tmp_path, record, words):
    with pytest.raises(DataFileError, match=words):
        read_examples(_jsonl(tmp_path / "bad.jsonl", [record]))


def test_a_missing_dotted_path_names_the_path_and_the_fields_present(tmp_path):
    path = _jsonl(tmp_path / "sg.jsonl", [SHAREGPT, {"conversations": [_sg("human", "Hi")]}])
    with pytest.raises(DataFileError, match=r"sg.jsonl: line 2: field 'conversations.1.value' "
                                            r"is missing \(the record has 'conversations'\)"):
        read_examples(path, "instruction=conversations.0.value,output=conversations.1.value")


def test_data_fields_say_which_target_another_tools_name_is():
    with pytest.raises(ConfigError, match=r"names 'response', which is not one of .* "
                                          r"\('response' is fedtune's 'output'\)"):
        Config.from_flat({"data-fields": "instruction=q,response=conversations.1.value"})


# ---- preference pairs ----------------------------------------------------------------------
def test_sharegpt_and_openai_preference_records(tmp_path):
    sharegpt = {"system": "Be kind.", "conversations": [
        _sg("human", "Hi"), _sg("gpt", "Hello."), _sg("human", "Say thanks.")],
        "chosen": _sg("gpt", "Thank you!"), "rejected": _sg("gpt", "No."), "category": "polite"}
    openai = {"messages": [{"role": "user", "content": "Say thanks."}],
              "chosen": {"role": "assistant", "content": "Thank you!"},
              "rejected": {"role": "assistant", "content": "No."}}
    plain = {"conversations": [_sg("human", "Say thanks.")], "chosen": "Thank you!",
             "rejected": "No."}
    sg, oa, pl = read_pairs(_jsonl(tmp_path / "prefs.jsonl", [sharegpt, openai, plain])).pairs
    assert (sg.chosen, sg.rejected, sg.category) == ("Thank you!", "No.", "polite")
    assert sg.instruction.instruction == "Say thanks."
    assert sg.instruction.input == "system: Be kind.\nuser: Hi\nassistant: Hello."
    assert [r for r, _ in sg.instruction.messages] == ["system", "user", "assistant", "user"]
    for pair in (oa, pl):
        assert (pair.chosen, pair.rejected) == ("Thank you!", "No.")
        assert pair.instruction.messages == (("user", "Say thanks."),)
    assert "Say thanks." in sg.prompt_text() and "Be kind." in sg.prompt_text()
    labels = PAIRS.labels([sg, oa], "instruction")
    assert labels == ["Say thanks.", "Say thanks."]


def test_preference_dotted_paths(tmp_path):
    record = {"conversations": [_sg("human", "Q?")], "chosen": _sg("gpt", "good"),
              "rejected": _sg("gpt", "bad")}
    path = _jsonl(tmp_path / "prefs.jsonl", [record])
    (pair,) = read_pairs(path, "prompt=conversations.0.value,chosen=chosen.value,"
                               "rejected=rejected.value").pairs
    assert (pair.prompt, pair.chosen, pair.rejected, pair.instruction) == (
        "Q?", "good", "bad", None)


@pytest.mark.parametrize("record, words", [
    ({"conversations": [_sg("human", "Q")], "chosen": {"from": "gpt"},
      "rejected": _sg("gpt", "b")},
     r"prefs.jsonl: line 1: field 'chosen' needs string 'role' and 'content' fields"),
    ({"conversations": [_sg("human", "Q")], "chosen": _sg("gpt", "a")},
     r"prefs.jsonl: line 1: field 'rejected' is missing \(the record has 'conversations', "
     r"'chosen'\)"),
    ({"conversations": [{"from": "human"}], "chosen": _sg("gpt", "a"),
      "rejected": _sg("gpt", "b")},
     r"line 1: conversations\[0\] needs string 'role' and 'content'"),
    ({"conversations": [_sg("human", "Q")], "chosen": _sg("gpt", ""),
      "rejected": _sg("gpt", "b")},
     r"line 1: the chosen response is empty"),
])
def test_malformed_sharegpt_pairs_name_file_line_and_field(tmp_path, record, words):
    with pytest.raises(DataFileError, match=words):
        read_pairs(_jsonl(tmp_path / "prefs.jsonl", [record]))
