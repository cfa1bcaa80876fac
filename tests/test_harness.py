"""``fedtune evaluate``: lm-evaluation-harness on a run's final model (issue #28 item 2).

One-round runs of FedIT, FedKSeed and Ferret on the `tiny` preset (in-process grid), scored on
the shipped local task ``fedtune_mc`` (a few documents) and on a task YAML this file writes
itself (a generation task in a format fedtune never wrote); the user errors, each one sentence
and exit 2 before any model loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("lm_eval")

from fedtune.cli import main as cli  # noqa: E402
from fedtune.eval import harness  # noqa: E402
from fedtune.eval.harness_task import documents, write_task  # noqa: E402
from tests.inprocess_grid import simulate_in_process  # noqa: E402

SMALL = ("num-server-rounds=1 local-steps=1 batch-size=2 examples-per-client=4 eval-examples=4 "
         "client-eval-examples=2 max-new-tokens=1 fraction-evaluate=0.0")
EXTRA = {"fedit": "", "fedkseed": " zo-seeds=16 zo-steps=2", "ferret": " ferret-seeds=8"}


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tasks")
    write_task(folder, n=8)
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("runs")
    made = {}
    for algorithm, extra in EXTRA.items():
        assert simulate_in_process(["--algorithm", algorithm, "--num-clients", "2", "--output-dir",
                                    str(out), "--name", algorithm,
                                    "--run-config", SMALL + extra]) == 0
        (made[algorithm],) = out.glob(f"{algorithm}-*")
    return made


@pytest.fixture
def offline(monkeypatch):
    """No network: Hugging Face's offline flags set and every internet socket refused."""
    import socket

    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    real = socket.socket.connect

    def connect(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            raise OSError(f"network used: {address}")
        return real(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)


def evaluate(*args: str) -> int:
    return cli(["evaluate", *args])


@pytest.mark.parametrize("algorithm", list(EXTRA))
def test_evaluate_writes_lm_eval_json_and_prints_the_table(algorithm, runs, task_dir, capsys,
                                                           offline):
    run = runs[algorithm]
    assert evaluate(str(run), "--tasks", "fedtune_mc", "--include-path", str(task_dir),
                    "--limit", "4", "--batch-size", "4") == 0
    out = capsys.readouterr().out
    assert "|fedtune_mc|" in out and "|acc     |" in out and "results written to" in out
    results = json.loads((run / "lm-eval.json").read_text())
    row = results["results"]["fedtune_mc"]
    assert 0.0 <= row["acc,none"] <= 1.0 and results["n-samples"]["fedtune_mc"]["effective"] == 4
    assert results["config"]["fedtune_run"] == str(run)
    assert results["config"]["algorithm"] == algorithm
    assert harness.scores(results)["lm-eval/fedtune_mc/acc"] == row["acc,none"]


def test_the_task_is_held_out_seeded_and_well_formed():
    from fedtune.data.synthetic import CATEGORIES, is_held_out

    docs = documents(40, seed=3)
    assert docs == documents(40, seed=3) and docs != documents(40, seed=4)
    assert [d["category"] for d in docs] == [c for c in CATEGORIES for _ in range(10)]
    for d in docs:
        assert len(set(d["choices"])) == len(d["choices"]) == (
            2 if d["category"] in ("parity", "larger") else 4)
        text = d["prompt"].split("### Input:\n")[1].split("\n")[0]
        assert is_held_out(d["category"], text) and d["prompt"].endswith("### Response:\n")
    labels = {d["label"] for d in docs if d["category"] == "first"}
    assert len(labels) > 1  # the right answer is not always in one place


def test_a_task_kept_back_from_developers_runs(runs, tmp_path, capsys):
    """A generation task with its own fields, Jinja prompt and metric, written here."""
    data = tmp_path / "held.json"
    data.write_text(json.dumps([{"q": "Give the first word.", "x": "cat dog", "a": "cat"},
                                {"q": "Which number is larger?", "x": "3 9", "a": "9"}]))
    (tmp_path / "held_back.yaml").write_text(f"""\
task: held_back
dataset_path: json
dataset_kwargs:
  data_files: {{validation: {json.dumps(str(data))}}}
validation_split: validation
output_type: generate_until
doc_to_text: "### Instruction:\\n{{{{q}}}}\\n\\n### Input:\\n{{{{x}}}}\\n\\n### Response:\\n"
doc_to_target: "{{{{a}}}}"
generation_kwargs: {{until: ["\\n"], max_gen_toks: 3, do_sample: false}}
metric_list:
  - {{metric: exact_match, aggregation: mean, higher_is_better: true}}
""")
    assert evaluate(str(runs["fedit"]), "--tasks", "held_back", "--include-path",
                    str(tmp_path)) == 0
    assert "|held_back|" in capsys.readouterr().out
    row = json.loads((runs["fedit"] / "lm-eval.json").read_text())["results"]["held_back"]
    assert row["exact_match,none"] in (0.0, 0.5, 1.0)


@pytest.fixture
def no_model(monkeypatch):
    """Any attempt to load a run's model fails the test: the errors come before it."""
    from fedtune import cli as cli_module

    def refuse(run_dir):
        raise AssertionError("the model loaded before the error")

    monkeypatch.setattr(cli_module, "_run_model", refuse)


def one_sentence(capsys, *args: str) -> str:
    assert evaluate(*args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fedtune: ") and err.count("\n") == 0 and "Traceback" not in err
    return err


def test_user_errors_are_one_sentence_before_the_model_loads(runs, task_dir, tmp_path, capsys,
                                                             no_model, monkeypatch):
    run, tasks = str(runs["fedit"]), ["--include-path", str(task_dir)]
    assert "not a fedtune run folder" in one_sentence(capsys, str(tmp_path / "nope"), "--tasks",
                                                      "fedtune_mc")
    assert "not a folder" in one_sentence(capsys, run, "--tasks", "x", "--include-path",
                                          str(tmp_path / "nope"))
    assert "--batch-size 'big'" in one_sentence(capsys, run, "--tasks", "fedtune_mc", *tasks,
                                                "--batch-size", "big")
    assert "--limit 2.5" in one_sentence(capsys, run, "--tasks", "fedtune_mc", "--limit", "2.5")
    assert "--tasks names no task" in one_sentence(capsys, run, "--tasks", " , ")
    (tmp_path / "bad.yaml").write_text(
        "task: bad_data\ndataset_path: json\ndataset_kwargs: {data_files: {test: /nonexistent/"
        "x.jsonl}}\ntest_split: test\noutput_type: multiple_choice\ndoc_to_text: q\n"
        "doc_to_choice: c\ndoc_to_target: 0\n")
    assert "could not load the task(s) bad_data" in one_sentence(
        capsys, run, "--tasks", "bad_data", "--include-path", str(tmp_path))
    # lm-eval's own ~15,000 task files are indexed for a name not found locally: here only the
    # local folder is (seconds saved), which changes nothing in the check
    from lm_eval.tasks import TaskManager

    monkeypatch.setattr(harness, "_all_tasks", lambda path: TaskManager(
        include_path=path, include_defaults=False))
    err = one_sentence(capsys, run, "--tasks", "fedtune_mc,no_such_task", *tasks)
    assert "Task 'no_such_task' is not in lm-eval's tasks or under" in err
    monkeypatch.setitem(__import__("sys").modules, "lm_eval", None)
    assert '.[eval]' in one_sentence(capsys, run, "--tasks", "fedtune_mc", *tasks)


def test_a_run_without_a_final_model_is_one_sentence(runs, tmp_path, capsys):
    config = json.loads((runs["fedit"] / "config.json").read_text())
    unfinished, local = tmp_path / "unfinished", tmp_path / "local"
    unfinished.mkdir()
    (unfinished / "config.json").write_text(json.dumps(config))
    tasks = ["--tasks", "fedtune_mc", "--include-path", str(write_task(tmp_path / "t", 4).parent)]
    assert "has no saved fedit result" in one_sentence(capsys, str(unfinished), *tasks)
    local.mkdir()  # the local baseline leaves one adapter per client: said before any task loads
    (local / "config.json").write_text(json.dumps({**config, "train": {
        **config["train"], "algorithm": "local"}}))
    assert "which leaves no single final model" in one_sentence(capsys, str(local), "--tasks",
                                                                "no_such_task")


def test_json_safe_and_scores():
    import numpy as np

    safe = harness.json_safe({"a": np.float32(0.5), "b": float("nan"), "c": (1, np.int64(2)),
                              "d": np.dtype("float32"), 3: None})
    assert safe == {"a": 0.5, "b": None, "c": [1, 2], "d": "float32", "3": None}
    assert harness.scores({"results": {"t": {"alias": "t", "acc,none": 0.25, "f1,strict": 1,
                                             "acc_stderr,none": "N/A"}}}) == {
        "lm-eval/t/acc": 0.25, "lm-eval/t/f1-strict": 1.0}


def test_scores_reach_the_runs_tensorboard(tmp_path, task_dir, capsys):
    """A run with report-to='tensorboard': the scores land in its event file at its last
    round, read back with TensorBoard's own reader."""
    tracking = pytest.importorskip("fedtune.tracking")
    if not hasattr(tracking, "log_final_metrics"):
        pytest.skip("fedtune.tracking cannot reopen a run's trackers")
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert simulate_in_process(["--num-clients", "2", "--output-dir", str(tmp_path),
                                "--run-config", SMALL + " report-to='tensorboard'"]) == 0
    (run,) = tmp_path.glob("fedit-*")
    assert evaluate(str(run), "--tasks", "fedtune_mc", "--include-path", str(task_dir),
                    "--limit", "2") == 0
    assert "logged to tensorboard" in capsys.readouterr().out
    acc = json.loads((run / "lm-eval.json").read_text())["results"]["fedtune_mc"]["acc,none"]
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("lm-eval/fedtune_mc/acc")] == [(1, acc)]


def test_the_harness_scores_as_fedtune_trains():
    """lm-eval's log-likelihood of an answer equals the model's own on the ids fedtune trains
    on: BOS + prompt, then the answer (lm-eval moves the prompt's final newline into the scored
    part, the same for every choice)."""
    import torch
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from fedtune.data.example import Example
    from fedtune.data.template import render_prompt
    from fedtune.data.tokenize import prompt_ids
    from fedtune.models.loading import build_tiny, tiny_tokenizer

    model, tok = build_tiny().eval(), tiny_tokenizer()
    example = Example("Give the first word.", "cat", "cat dog owl")
    with harness.quiet_lm_eval():
        lm = HFLM(pretrained=model, tokenizer=harness.with_bos(tok), batch_size=2)
        (got, _), = lm.loglikelihood([Instance("loglikelihood", {}, (render_prompt(example),
                                                                    example.output), 0)])
    ids = prompt_ids(tok, example) + tok(example.output, add_special_tokens=False)["input_ids"]
    assert ids[0] == tok.bos_token_id and tok("x")["input_ids"][0] != tok.bos_token_id
    scored = len(ids) - len(prompt_ids(tok, example)) + 1  # the answer and the newline before it
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
    want = sum(logp[i - 1, ids[i]].item() for i in range(len(ids) - scored, len(ids)))
    assert got == pytest.approx(want, abs=1e-4)
