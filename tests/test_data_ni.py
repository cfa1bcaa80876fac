"""Natural Instructions folders preprocessed as in FedKSeed: rules, stats, splits."""

import json
import logging

import pytest

from fedtune.data.config import DataConfig
from fedtune.data.instructions import DataFileError, read_examples
from fedtune.data.natural_instructions import NIRules, load_eval_tasks, load_train_tasks
from fedtune.data.split import EXAMPLES, split
from tests.conftest import SHARED

NI = SHARED / "data" / "natural-instructions"


def _task(folder, name, n, n_long=0):
    instances = [{"id": f"{name}-{i}", "input": f"{name} input {i}" + "x" * 1024 * (i < n_long),
                  "output": [f"out {i}", "alt"]} for i in range(n)]
    raw = {"Contributors": [], "Definition": [f"Solve {name}.", "unused"],
           "Instances": instances}
    (folder / "tasks" / f"{name}.json").write_text(json.dumps(raw))


@pytest.fixture
def ni_folder(tmp_path):
    (tmp_path / "tasks").mkdir()
    (tmp_path / "splits" / "default").mkdir(parents=True)
    _task(tmp_path, "task1_a", 30, n_long=5)  # 25 short -> kept, 5 sampled
    _task(tmp_path, "task2_b", 22, n_long=4)  # 18 short -> too few
    _task(tmp_path, "task5_e", 40)  # 8 sampled
    _task(tmp_path, "task3_c", 100)  # eval: max(20, 2) = 20
    _task(tmp_path, "task4_d", 10)  # eval: all 10
    (tmp_path / "splits" / "default" / "train_tasks.txt").write_text(
        "task1_a\ntask2_b\ntask5_e\ntask9_missing\ntask3_c\n")
    (tmp_path / "splits" / "default" / "test_tasks.txt").write_text("task3_c\ntask4_d\n")
    return tmp_path


def test_training_rules_and_their_stats(ni_folder, caplog):
    with caplog.at_level(logging.INFO, logger="fedtune"):
        examples, stats = load_train_tasks(ni_folder, "splits/default/train_tasks.txt", seed=0,
                                           exclude=frozenset({"task3_c"}))
    assert (stats.tasks_listed, stats.tasks_missing, stats.tasks_held_out,
            stats.tasks_too_few, stats.tasks_kept) == (5, 1, 1, 1, 2)
    assert (stats.instances, stats.too_long, stats.in_dropped_tasks) == (92, 9, 18)
    assert (stats.kept, stats.sampled_out) == (13, 65 - 13) and len(examples) == 13
    assert "2 of 5 tasks kept" in caplog.text
    first = [e for e in examples if e.category == "task1_a"]
    assert len(first) == 5 and all(e.instruction == "Solve task1_a." for e in first)
    assert all(e.output.startswith("out ") and len(e.input) < 1024 for e in examples)
    again, _ = load_train_tasks(ni_folder, "splits/default/train_tasks.txt", seed=0,
                                exclude=frozenset({"task3_c"}))
    other, _ = load_train_tasks(ni_folder, "splits/default/train_tasks.txt", seed=1,
                                exclude=frozenset({"task3_c"}))
    assert again == examples and other != examples


def test_eval_rule_and_configurable_rules(ni_folder):
    examples, stats = load_eval_tasks(ni_folder, "task3_c,task4_d", seed=0)
    per = {c: sum(e.category == c for e in examples) for c in ("task3_c", "task4_d")}
    assert per == {"task3_c": 20, "task4_d": 10} and stats.sampled_out == 80
    loose = NIRules(max_input_chars=5000, min_instances=5, sample_fraction=1.0)
    _, stats = load_train_tasks(ni_folder, "task1_a,task2_b", seed=0, rules=loose)
    assert stats.kept == 52 and stats.too_long == 0


def test_folder_gives_one_client_per_task_and_a_disjoint_eval_set(ni_folder):
    cfg = DataConfig(data=str(ni_folder), data_tasks="splits/default/train_tasks.txt",
                     eval_tasks="splits/default/test_tasks.txt")
    held = split(cfg, EXAMPLES, "server", 0)
    assert {e.category for e in held} == {"task3_c", "task4_d"} and len(held) == 30
    clients = [split(cfg, EXAMPLES, "train", 0, p, 2) + split(cfg, EXAMPLES, "held-out", 0, p, 2)
               for p in range(2)]
    assert [{e.category for e in c} for c in clients] == [{"task1_a"}, {"task5_e"}]
    assert [len(c) for c in clients] == [5, 8]
    with pytest.raises(ValueError, match="has 2 .* but there are 3 clients; run with 2"):
        split(cfg, EXAMPLES, "train", 0, 0, 3)


def test_bad_task_file_names_the_instance(ni_folder):
    raw = {"Definition": ["Do it."], "Instances": [{"id": "x", "input": "a", "output": ["b"]},
                                                   {"id": "y", "input": "c"}]}
    path = ni_folder / "tasks" / "task7_bad.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(DataFileError, match=r"task7_bad.json: Instances\[1\]: field 'output' "
                                            r"is missing .* \(the instance has 'id', 'input'\)"):
        load_train_tasks(ni_folder, "task7_bad", seed=0)
    with pytest.raises(DataFileError, match="None of the 1 tasks listed"):
        load_train_tasks(ni_folder, "task8_absent", seed=0)


@pytest.mark.skipif(not (NI / "tasks").is_dir(), reason="../shared natural-instructions absent")
def test_real_task_files():
    path = NI / "tasks" / "task1146_country_capital.json"
    examples = read_examples(path)
    assert len(examples) == 231 and examples[0].category == "task1146_country_capital"
    train, stats = load_train_tasks(NI, "task1146_country_capital,task121_zest_text_modification",
                                    seed=0)
    assert stats.tasks_kept == 2 and len(train) == 231 // 5 + 127 // 5
    held, _ = load_eval_tasks(NI, "splits/default/test_tasks.txt", seed=0)
    assert len({e.category for e in held}) == 7
