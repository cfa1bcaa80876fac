"""The one split (fedtune.data.split.split): the same rules for instruction examples and
preference pairs."""

from __future__ import annotations

import json

import pytest

from fedtune.data.config import DataConfig
from fedtune.data.partition import PartitionError
from fedtune.data.preference import PreferenceExample
from fedtune.data.readers import DataFileError
from fedtune.data.split import EXAMPLES, PAIRS, split

CATS = ("red", "green", "blue", "gold")
N = 120


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


@pytest.fixture
def files(tmp_path):
    """The same N records as instruction examples and as preference pairs: record i has
    prompt ``P<i>``, response (chosen) ``o<i % 5>`` and category ``CATS[i % 4]``."""
    examples = _write(tmp_path / "ex.jsonl", [
        {"instruction": f"P{i}", "output": f"o{i % 5}", "category": CATS[i % 4]}
        for i in range(N)])
    pairs = _write(tmp_path / "pairs.jsonl", [
        {"prompt": f"P{i}", "chosen": f"o{i % 5}", "rejected": "no", "category": CATS[i % 4]}
        for i in range(N)])
    return {EXAMPLES: examples, PAIRS: pairs}


def _ids(records) -> list[str]:
    return [r.prompt if isinstance(r, PreferenceExample) else r.instruction for r in records]


def _sides(cfg, records, n, seed=0):
    return [(_ids(split(cfg, records, "train", seed, p, n)),
             _ids(split(cfg, records, "held-out", seed, p, n))) for p in range(n)]


CASES = [("iid", "category", 3), ("dirichlet", "category", 3), ("natural", "category", 4),
         ("shards", "category", 4), ("natural", "output", 5), ("shards", "instruction", 3),
         ("dirichlet", "output", 2)]


@pytest.mark.parametrize("records", [EXAMPLES, PAIRS], ids=["examples", "pairs"])
@pytest.mark.parametrize("how,by,n", CASES)
def test_held_out_never_on_a_client_clients_disjoint_first_tenth_held_out(files, records, how,
                                                                          by, n):
    cfg = DataConfig(data=files[records], eval_examples=12, partition=how, partition_by=by)
    server = _ids(split(cfg, records, "server", 0))
    sides = _sides(cfg, records, n)
    seen = [i for train, held in sides for i in train + held]
    assert len(server) == 12 and not set(server) & set(seen)
    assert len(seen) == len(set(seen)) == N - 12  # every client disjoint, nothing lost
    for train, held in sides:
        assert len(held) == max(1, (len(train) + len(held)) // 10)
    assert _sides(cfg, records, n) == sides  # deterministic
    assert _sides(cfg, records, n, seed=1) != sides


@pytest.mark.parametrize("how,by,n", CASES)
def test_pairs_and_examples_are_partitioned_alike_by_partition_by(files, how, by, n):
    """instruction = the prompt, output = the chosen response, category = category."""
    got = {}
    for records in (EXAMPLES, PAIRS):
        cfg = DataConfig(data=files[records], eval_examples=12, partition=how, partition_by=by)
        got[records.name] = (_ids(split(cfg, records, "server", 0)), _sides(cfg, records, n))
    assert got["examples"] == got["pairs"]
    if by in ("category", "output") and how == "natural":
        labels = [{int(i[1:]) % (4 if by == "category" else 5) for i in train + held}
                  for train, held in got["pairs"][1]]
        assert all(len(s) == 1 for s in labels)  # one label value per client


def test_pair_labels(tmp_path):
    plain = PreferenceExample(chosen="yes", rejected="no", prompt="Is it?", category="c")
    assert [PAIRS.label(plain, f) for f in ("category", "instruction", "input", "output")] == [
        "c", "Is it?", "", "yes"]
    chat = PAIRS.read(_write(tmp_path / "chat.jsonl", [{
        "chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"},
                   {"role": "user", "content": "Bye?"}, {"role": "assistant", "content": "Bye"}],
        "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"},
                     {"role": "user", "content": "Bye?"}, {"role": "assistant", "content": "No"}],
        "category": "c"}]), "")[0]
    assert [PAIRS.label(chat, f) for f in ("category", "instruction", "input", "output")] == [
        "c", "Bye?", "user: Hi\nassistant: Yo", "Bye"]


def test_plain_text_pairs_have_no_input_to_partition_by(files):
    cfg = DataConfig(data=files[PAIRS], partition="shards", partition_by="input")
    with pytest.raises(PartitionError, match="groups pairs by 'input', but no pair has one"):
        split(cfg, PAIRS, "train", 0, 0, 2)
    cfg = DataConfig(data=files[EXAMPLES], partition="shards", partition_by="input")
    with pytest.raises(PartitionError, match="no example has one; map a field to it"):
        split(cfg, EXAMPLES, "train", 0, 0, 2)


@pytest.mark.parametrize("records", [EXAMPLES, PAIRS], ids=["examples", "pairs"])
def test_too_small_data_gives_a_clear_error(files, records, tmp_path):
    cfg = DataConfig(data=files[records], eval_examples=N)
    with pytest.raises(DataFileError, match=f"all of its {records.name} went to the server"):
        split(cfg, records, "train", 0, 0, 2)
    cfg = DataConfig(data=files[records], eval_examples=N - 3)
    with pytest.raises(DataFileError, match=f"3 training {records.name} .* cannot cover 4 "
                                            "clients"):
        split(cfg, records, "train", 0, 0, 4)
    cfg = DataConfig(data=files[records], eval_examples=N - 4)
    with pytest.raises(DataFileError, match="client 1 has 1 .* leaves none to train on"):
        split(cfg, records, "held-out", 0, 1, 4)


@pytest.mark.parametrize("records", [EXAMPLES, PAIRS], ids=["examples", "pairs"])
def test_own_file_and_eval_data(files, records, tmp_path):
    cfg = DataConfig(data=files[records], eval_data=files[records], eval_examples=7)
    assert _ids(split(cfg, records, "server", 0)) == [f"P{i}" for i in range(7)]
    cfg = DataConfig(eval_data=files[records], eval_examples=7)  # deployment: data=builtin
    server = _ids(split(cfg, records, "server", 0))
    # the server evaluates on the operator's held-out file, for examples and pairs alike
    assert server == [f"P{i}" for i in range(7)]
    train = _ids(split(cfg, records, "train", 3, own_file=files[records]))
    held = _ids(split(cfg, records, "held-out", 3, own_file=files[records]))
    assert len(held) == N // 10 and sorted(train + held) == sorted(f"P{i}" for i in range(N))


def test_builtin_pairs_are_the_builtin_examples():
    cfg = DataConfig(examples_per_client=10, client_eval_examples=3, eval_examples=8)
    for role, pid in (("train", 1), ("held-out", 1), ("server", 0)):
        pairs = split(cfg, PAIRS, role, 0, pid, 4)
        assert [p.instruction for p in pairs] == split(cfg, EXAMPLES, role, 0, pid, 4)


def test_fedit_folder_of_pairs_gives_client_i_file_i(tmp_path):
    for i in range(2):
        (tmp_path / f"local_training_{i}.json").write_text(json.dumps(
            [{"prompt": f"c{i} p{k}", "chosen": "a", "rejected": "b"} for k in range(10)]))
    (tmp_path / "global_test.json").write_text(json.dumps(
        [{"prompt": "t", "chosen": "a", "rejected": "b"}]))
    cfg = DataConfig(data=str(tmp_path))
    assert _ids(split(cfg, PAIRS, "server", 0)) == ["t"]
    for train, held in _sides(cfg, PAIRS, 2):
        assert len(held) == 1 and len(train) == 9 and len({i[:2] for i in train + held}) == 1


def test_natural_instructions_folder_is_not_pairs_and_roles_are_checked(tmp_path, files):
    (tmp_path / "ni").mkdir()
    (tmp_path / "ni" / "task1_a.json").write_text(json.dumps(
        {"Definition": ["Do."], "Instances": [{"input": "a", "output": ["b"]}]}))
    with pytest.raises(DataFileError, match="Natural Instructions folder, which holds "
                                            "instruction examples, not pairs"):
        split(DataConfig(data=str(tmp_path / "ni")), PAIRS, "train", 0, 0, 1)
    with pytest.raises(ValueError, match="role 'eval' is not one of server, train, held-out"):
        split(DataConfig(data=files[EXAMPLES]), EXAMPLES, "eval", 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="partition id 2 outside"):
        split(DataConfig(data=files[EXAMPLES]), EXAMPLES, "train", 0, 2, 2)
