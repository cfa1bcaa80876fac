"""Built-in tasks, file readers with clear errors, partitioning."""

import gzip
import json

import pytest

from fedtune.config import DataConfig
from fedtune.data import client_split, eval_split, synthetic
from fedtune.data.files import DataFileError, read_examples


def test_builtin_split_is_non_iid_and_held_out_is_disjoint():
    train = synthetic.client_examples(1, 8, 100, seed=0)
    cats = [e.category for e in train]
    assert cats.count(synthetic.CATEGORIES[1]) == 80 and cats.count(synthetic.CATEGORIES[2]) == 20
    held = synthetic.eval_examples(40, seed=0)
    assert {e.category for e in held} == set(synthetic.CATEGORIES)
    train_inputs = {
        (e.category, e.input)
        for p in range(8)
        for e in synthetic.client_examples(p, 8, 100, seed=0)
    }
    assert not train_inputs & {(e.category, e.input) for e in held}
    assert synthetic.client_examples(1, 8, 100, seed=0) == train  # deterministic


def test_reads_alpaca_jsonl_gz_and_dolly_json(tmp_path):
    alpaca = tmp_path / "a.jsonl.gz"
    with gzip.open(alpaca, "wt") as fh:
        for i in range(3):
            fh.write(json.dumps({"instruction": f"Say {i}", "input": "", "output": str(i)}) + "\n")
    assert [e.output for e in read_examples(alpaca)] == ["0", "1", "2"]
    dolly = tmp_path / "d.json"
    dolly.write_text(
        json.dumps([{"instruction": "Q", "context": "C", "response": "R", "category": "qa"}])
    )
    (ex,) = read_examples(dolly)
    assert (ex.input, ex.output, ex.category) == ("C", "R", "qa")


def test_malformed_file_names_file_line_and_field(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c"}\n')
    with pytest.raises(DataFileError, match=r"bad.jsonl: line 2: field 'output' is missing"):
        read_examples(bad)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"instruction": "a", "output": "b"}\n\n{"instruction": \n')
    with pytest.raises(DataFileError, match=r"broken.jsonl: line 3 is not valid JSON"):
        read_examples(broken)


def test_file_data_is_partitioned_with_a_global_held_out_set(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(
        "".join(json.dumps({"instruction": f"i{i}", "output": f"o{i}"}) + "\n" for i in range(100))
    )
    cfg = DataConfig(data=str(path), eval_examples=10)
    held = {e.instruction for e in eval_split(cfg, seed=0)}
    parts = [
        client_split(cfg, p, 3, seed=0) + client_split(cfg, p, 3, seed=0, held_out=True)
        for p in range(3)
    ]
    seen = [e.instruction for part in parts for e in part]
    assert len(held) == 10 and len(seen) == 90 and not held & set(seen)
    assert len(set(seen)) == 90
