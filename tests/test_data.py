"""Built-in tasks, file readers with clear errors, partitioning."""

import gzip
import json

import pytest

from fedtune.data import synthetic
from fedtune.data.config import DataConfig
from fedtune.data.instructions import DataFileError, read_examples
from fedtune.data.split import EXAMPLES, split
from tests.conftest import SHARED


def _client(cfg, p, n):
    """Client ``p`` of ``n``: its training and held-out sides (seed 0)."""
    return split(cfg, EXAMPLES, "train", 0, p, n) + split(cfg, EXAMPLES, "held-out", 0, p, n)


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
    held = {e.instruction for e in split(cfg, EXAMPLES, "server", 0)}
    parts = [_client(cfg, p, 3) for p in range(3)]
    seen = [e.instruction for part in parts for e in part]
    assert len(held) == 10 and len(seen) == 90 and not held & set(seen)
    assert len(set(seen)) == 90


def _fedit_folder(tmp_path, sizes=(12, 20, 8)):
    for i, n in enumerate(sizes):
        records = [{"instruction": f"c{i} q{k}", "context": "", "response": "r",
                    "category": f"cat{i}"} for k in range(n)]
        (tmp_path / f"local_training_{i}.json").write_text(json.dumps(records))
    (tmp_path / "global_test.json").write_text(json.dumps(
        [{"instruction": "t", "context": "", "response": "r", "category": "cat0"}]))
    return tmp_path


def test_fedit_folder_gives_client_i_file_i(tmp_path):
    cfg = DataConfig(data=str(_fedit_folder(tmp_path)))
    for i, n in enumerate((12, 20, 8)):
        train, held = (split(cfg, EXAMPLES, side, 0, i, 3) for side in ("train", "held-out"))
        assert {e.category for e in train + held} == {f"cat{i}"} and len(train + held) == n
        assert len(held) == max(1, n // 10)
    assert [e.instruction for e in split(cfg, EXAMPLES, "server", 0)] == ["t"]
    with pytest.raises(DataFileError, match="holds 3 client files .* run with 3 clients"):
        split(cfg, EXAMPLES, "train", 0, 0, 4)
    pooled = DataConfig(data=str(tmp_path), partition="iid")
    assert sum(len(_client(pooled, p, 4)) for p in range(4)) == 40
    (tmp_path / "global_test.json").unlink()
    with pytest.raises(DataFileError, match="no global_test.json; set eval-data"):
        split(cfg, EXAMPLES, "server", 0)
    (tmp_path / "local_training_1.json").rename(tmp_path / "local_training_5.json")
    with pytest.raises(DataFileError, match="local_training_1.json is missing"):
        split(cfg, EXAMPLES, "train", 0, 0, 3)


@pytest.mark.parametrize("how", ["dirichlet", "shards", "natural"])
def test_non_iid_file_partitions_keep_the_server_held_out_set_off_clients(tmp_path, how):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"instruction": f"i{i}", "output": "o",
                                        "category": f"c{i % 4}"}) + "\n" for i in range(200)))
    cfg = DataConfig(data=str(path), eval_examples=20, partition=how)
    held = {e.instruction for e in split(cfg, EXAMPLES, "server", 0)}
    seen = [e.instruction for p in range(4)
            for e in _client(cfg, p, 4)]
    assert len(held) == 20 and len(seen) == 180 == len(set(seen)) and not held & set(seen)


DOLLY = SHARED / "data" / "dolly-fedit"


@pytest.mark.skipif(not DOLLY.is_dir(), reason="../shared dolly-fedit absent")
def test_real_dolly_fedit_split():
    cfg = DataConfig(data=str(DOLLY), eval_data=str(DOLLY / "global_test.json"))
    assert len(split(cfg, EXAMPLES, "server", 0)) == 80
    mine = _client(cfg, 3, 10)
    records = json.loads((DOLLY / "local_training_3.json").read_text())
    assert len(mine) == len(records) and all(e.output for e in mine)
    assert {e.category for e in mine} == {r["category"] for r in records}
