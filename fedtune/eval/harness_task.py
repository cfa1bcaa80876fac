"""A local lm-evaluation-harness task from the built-in data: ``fedtune_mc``.

Each document is one held-out instance of the built-in ``tiny`` tasks (parity, first, larger,
next), rendered with the Alpaca prompt the runs train on, with its right answer and wrong
answers in the same format: ``first`` and ``next`` have four choices (3 wrong), ``larger`` and
``parity`` the two their question allows. lm-eval scores it by log-likelihood (``acc``: the
choice the model finds most likely is the right one; ``acc_norm``: per byte).

:func:`write_task` writes ``DIR/<name>.yaml`` and ``DIR/<name>.jsonl``; then
``fedtune evaluate RUN --tasks fedtune_mc --include-path DIR`` scores a run on it, offline.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from fedtune.data.example import Example
from fedtune.data.synthetic import CATEGORIES, WORDS, make_examples
from fedtune.data.template import render_prompt

NAME = "fedtune_mc"
#: make_examples' seed offset: held-out instances other than the runs' own eval set (10_000)
SEED_OFFSET = 20_000

YAML = """\
# lm-evaluation-harness task written by fedtune (fedtune/eval/harness_task.py); regenerate it
# rather than editing: data_files is an absolute path.
task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: prompt
doc_to_choice: choices
doc_to_target: label
target_delimiter: ""
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def wrong_answers(example: Example, rng: random.Random) -> list[str]:
    """The wrong choices of one instance, each in the right answer's format."""
    text, answer = example.input, example.output
    if example.category == "parity":
        return ["odd" if answer == "even" else "even"]
    if example.category == "larger":
        return [w for w in text.split() if w != answer][:1]
    if example.category == "first":
        others = [w for w in text.split() if w != answer]
        others += rng.sample([w for w in WORDS if w not in text.split()], 3)
        return others[:3]
    if example.category == "next":
        n = int(text)
        return [str(v) for v in (n, n + 2, n + 10)]
    raise ValueError(f"unknown category '{example.category}'")


def documents(n: int, seed: int = 0, categories: tuple[str, ...] = CATEGORIES) -> list[dict]:
    """``n`` documents spread evenly over ``categories``, from the held-out side of the split;
    the same ``(n, seed)`` gives the same documents (choices shuffled with the seed)."""
    per = [n // len(categories) + (i < n % len(categories)) for i in range(len(categories))]
    rng = random.Random(f"harness-{seed}")
    docs = []
    for category, k in zip(categories, per, strict=True):
        for ex in make_examples(category, k, seed=SEED_OFFSET + seed, held_out=True):
            choices = [ex.output, *wrong_answers(ex, rng)]
            rng.shuffle(choices)
            docs.append({"prompt": render_prompt(ex), "choices": choices,
                         "label": choices.index(ex.output), "category": category})
    return docs


def write_task(folder: Path | str, n: int = 200, seed: int = 0, name: str = NAME,
               categories: tuple[str, ...] = CATEGORIES) -> Path:
    """Write ``folder/<name>.yaml`` over ``folder/<name>.jsonl``; returns the YAML's path."""
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in documents(n, seed, categories)))
    yaml = folder / f"{name}.yaml"
    yaml.write_text(YAML.format(name=name, data=json.dumps(str(data))))
    return yaml
