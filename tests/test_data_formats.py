"""Formats (JSON, JSONL, CSV, Parquet, hub names) and layouts (chat, field mapping), with the
one-sentence errors for bad records."""

import csv
import gzip
import json

import pytest

from fedtune.config import Config, ConfigError
from fedtune.data.instructions import DataFileError, read_examples
from fedtune.data.readers import is_hub_name

ROWS = [
    {"question": "What is 2+2?", "answer": "4", "topic": "math"},
    {"question": "Capital of France?", "answer": "Paris", "topic": "geo"},
]
FIELDS = "instruction=question,output=answer,category=topic"


def _expected():
    return [(r["question"], r["answer"], r["topic"]) for r in ROWS]


def _triples(examples):
    return [(e.instruction, e.output, e.category) for e in examples]


def test_csv_round_trip_with_field_mapping(tmp_path):
    path = tmp_path / "qa.csv"
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["question", "answer", "topic"])
        writer.writeheader()
        writer.writerows(ROWS)
    assert _triples(read_examples(path, FIELDS)) == _expected()
    gz = tmp_path / "qa.csv.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    assert _triples(read_examples(gz, FIELDS)) == _expected()


def test_parquet_round_trip(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "qa.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), path)
    assert _triples(read_examples(path, FIELDS)) == _expected()
    alpaca = tmp_path / "alpaca.parquet"
    pq.write_table(pa.Table.from_pylist([{"instruction": "Add", "input": "1 2", "output": 3}]),
                   alpaca)
    (ex,) = read_examples(alpaca)
    assert (ex.instruction, ex.input, ex.output) == ("Add", "1 2", "3")  # numbers become text


def test_chat_layout_keeps_the_prompt_turns(tmp_path):
    path = tmp_path / "chat.jsonl"
    record = {"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
    ], "category": "chit-chat"}
    path.write_text(json.dumps(record) + "\n")
    (ex,) = read_examples(path)
    assert ex.output == "Blue." and ex.instruction == "Name a colour."
    assert ex.input == "system: Be brief.\nuser: Hi\nassistant: Hello."
    assert ex.category == "chit-chat" and len(ex.messages) == 4
    assert ex.chat()[-1] == {"role": "user", "content": "Name a colour."}
    no_answer = tmp_path / "bad_chat.jsonl"
    no_answer.write_text(json.dumps({"messages": [{"role": "user", "content": "Hi"}]}) + "\n")
    with pytest.raises(DataFileError, match=r"bad_chat.jsonl: line 1: 'messages' has no "
                                            "'assistant' turn"):
        read_examples(no_answer)


def test_missing_field_lists_the_fields_present(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    with pytest.raises(DataFileError, match=r"qa.jsonl: line 1: field 'instruction' is missing "
                                            r"\(the record has 'question', 'answer', 'topic'\)"
                                            ".*data-fields"):
        read_examples(path)
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("question,answer\nq1,a1\nq2\n")
    with pytest.raises(DataFileError, match=r"bad.csv: line 3: field 'answer' is missing"):
        read_examples(bad_csv, "instruction=question,output=answer")


def test_bad_jsonl_and_json_name_the_line(tmp_path):
    bad = tmp_path / "bad.jsonl.gz"
    with gzip.open(bad, "wt") as fh:
        fh.write('{"instruction": "a", "output": "b"}\n{"instruction": "c", \n')
    with pytest.raises(DataFileError, match=r"bad.jsonl.gz: line 2 is not valid JSON"):
        read_examples(bad)
    empty_out = tmp_path / "e.json"
    empty_out.write_text(json.dumps([{"instruction": "a", "output": "  "}]))
    with pytest.raises(DataFileError, match=r"e.json: record 0: field 'output' is empty"):
        read_examples(empty_out)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(DataFileError, match=r"notes.txt: unsupported file type"):
        read_examples(text)


def test_data_fields_are_validated_in_the_config():
    Config.from_flat({"data-fields": FIELDS})
    with pytest.raises(ConfigError, match="names 'answer', which is not one of instruction"):
        Config.from_flat({"data-fields": "answer=output"})
    with pytest.raises(ConfigError, match="is not target=field"):
        Config.from_flat({"data-fields": "instruction"})
    with pytest.raises(ConfigError, match="partition='random' is unknown"):
        Config.from_flat({"partition": "random"})


def test_hub_names_load_through_datasets_or_fail_in_one_sentence(monkeypatch, tmp_path):
    datasets = pytest.importorskip("datasets")
    from fedtune.data import readers

    monkeypatch.delenv("HF_HUB_OFFLINE")  # online (the hermetic default is offline)
    assert is_hub_name("databricks/databricks-dolly-15k") and is_hub_name("hf:squad:validation")
    assert not is_hub_name("data/missing.jsonl") and not is_hub_name(str(tmp_path))
    calls = []

    def fake_load(name, split):
        calls.append((name, split))
        return datasets.Dataset.from_list(ROWS)

    monkeypatch.setattr(readers, "_hub_reachable", lambda: True)
    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    assert _triples(read_examples("acme/qa:test", FIELDS)) == _expected()
    assert calls == [("acme/qa", "test")]
    monkeypatch.setattr(readers, "_hub_reachable", lambda: False)
    with pytest.raises(DataFileError, match=r"Cannot load 'acme/qa': .* needs network access"):
        read_examples("acme/qa")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # offline mode: a cached copy, no reachability
    assert _triples(read_examples("acme/qa", FIELDS)) == _expected()
    assert calls[-1] == ("acme/qa", "train")


def _with_bom(path, text):
    path.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    return path


def test_a_utf8_byte_order_mark_is_not_part_of_the_first_field(tmp_path):
    """Spreadsheet programs save 'CSV UTF-8' with a BOM; JSON editors sometimes do too."""
    rows = [{"instruction": r["question"], "output": r["answer"], "category": r["topic"]}
            for r in ROWS]
    header = "instruction,output,category\n"
    csv_text = header + "".join(f"{r['instruction']},{r['output']},{r['category']}\n"
                                for r in rows)
    files = [_with_bom(tmp_path / "sheet.csv", csv_text),
             _with_bom(tmp_path / "records.json", json.dumps(rows)),
             _with_bom(tmp_path / "records.jsonl", "".join(json.dumps(r) + "\n" for r in rows))]
    gz = tmp_path / "sheet.csv.gz"
    gz.write_bytes(gzip.compress(files[0].read_bytes()))
    for path in [*files, gz]:
        assert _triples(read_examples(path)) == _expected(), path


def test_a_preference_csv_with_a_byte_order_mark_reads(tmp_path):
    from fedtune.data.preference import read_pairs

    path = _with_bom(tmp_path / "pairs.csv", "prompt,chosen,rejected\nQ?,good,bad\n")
    (pair,) = read_pairs(path).pairs
    assert (pair.prompt, pair.chosen, pair.rejected) == ("Q?", "good", "bad")


def test_a_file_that_is_not_utf8_is_one_sentence(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("instruction,output\nCafé?,oui\n".encode("latin-1"))
    with pytest.raises(DataFileError, match=r"latin1.csv: byte \d+ is not UTF-8 text .* save "
                                            "the file as UTF-8"):
        read_examples(path)
