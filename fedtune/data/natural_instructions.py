"""Super-NaturalInstructions task folders, preprocessed as in FedKSeed (Qin et al., ICML 2024).

A task file holds ``Definition`` (a list of strings) and ``Instances`` (``input`` and a list of
``output``). Per task: instruction = ``Definition[0]``, input = the instance input, response =
``output[0]``, category = the task name (the file name without ``.json``). The paper's rules,
each a config key:

- training tasks: keep instances whose input is shorter than ``ni-max-input-chars`` (1024)
  characters, keep tasks with at least ``ni-min-instances`` (20) of them, and sample
  ``ni-sample-fraction`` (20%) of each task's instances (at least one), seeded by the run seed;
- evaluation tasks: the same length rule, then up to ``max(ni-eval-min, ni-eval-fraction * n)``
  (20, 2%) instances per task, seeded.

Every rule's removals are counted in :class:`NIStats`, which the caller logs.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedtune.data.example import Example
from fedtune.data.readers import DataFileError
from fedtune.seeding import rng

log = logging.getLogger("fedtune")


@dataclass(frozen=True)
class NIRules:
    """The preprocessing rules (FedKSeed's values by default)."""

    max_input_chars: int = 1024
    min_instances: int = 20
    sample_fraction: float = 0.2
    eval_min: int = 20
    eval_fraction: float = 0.02


@dataclass
class NIStats:
    """What each rule removed while building one side (``train`` or ``eval``)."""

    split: str
    tasks_listed: int = 0  # tasks named by the list (or files in the folder without a list)
    tasks_missing: int = 0  # listed, but no task file in the folder
    tasks_held_out: int = 0  # removed from training because they are evaluation tasks
    tasks_too_few: int = 0  # fewer than min_instances instances after the length rule
    tasks_kept: int = 0
    instances: int = 0  # instances in the kept-or-dropped task files that were read
    too_long: int = 0  # input of max_input_chars characters or more
    in_dropped_tasks: int = 0  # short enough, but their task had too few
    sampled_out: int = 0  # not drawn by the per-task sample
    kept: int = 0

    def summary(self) -> str:
        return (f"Natural Instructions {self.split}: {self.tasks_kept} of {self.tasks_listed} "
                f"tasks kept ({self.tasks_missing} without a file, {self.tasks_held_out} held "
                f"out for evaluation, {self.tasks_too_few} with too few instances); "
                f"{self.kept} of {self.instances} instances kept ({self.too_long} too long, "
                f"{self.in_dropped_tasks} in dropped tasks, {self.sampled_out} not sampled).")


def tasks_dir(folder: str | Path) -> Path:
    """The folder holding the task files: ``folder/tasks`` if present, else ``folder``."""
    p = Path(folder)
    return p / "tasks" if (p / "tasks").is_dir() else p


def is_task_folder(folder: str | Path) -> bool:
    """A folder of Natural Instructions task files (or one with a ``tasks/`` subfolder)."""
    p = Path(folder)
    if not p.is_dir():
        return False
    first = next(iter(sorted(tasks_dir(p).glob("task*.json"))), None)
    if first is None:
        return False
    with first.open(encoding="utf-8-sig", errors="replace") as fh:  # read_task says if not
        head = fh.read(4096)
    return '"Definition"' in head or '"Instances"' in head or '"Contributors"' in head


def task_names(spec: str, folder: str | Path) -> list[str] | None:
    """Task names from ``spec``: a list file (one name per line; a path, or relative to
    ``folder``), or a comma list of names; ``None`` for an empty spec (every task file)."""
    spec = spec.strip()
    if not spec:
        return None
    if spec.endswith(".txt") or "/" in spec:
        path = Path(spec)
        if not path.is_file() and (Path(folder) / spec).is_file():
            path = Path(folder) / spec
        if not path.is_file():
            raise DataFileError(f"Task list '{spec}' does not exist (also not under {folder}); "
                                "pass a file with one task name per line, or a comma list.")
        items = path.read_text(encoding="utf-8-sig").split()
    else:
        items = spec.split(",")
    names = [n.strip().removesuffix(".json") for n in items if n.strip()]
    return list(dict.fromkeys(names))


def _definition(raw: dict[str, Any], path: Path) -> str:
    d = raw.get("Definition")
    if isinstance(d, str):
        d = [d]
    if not isinstance(d, list) or not d or not isinstance(d[0], str) or not d[0].strip():
        raise DataFileError(f"{path}: field 'Definition' is missing or empty (the task has "
                            f"{', '.join(repr(k) for k in raw)}); give a list of strings.")
    return d[0]


def task_instances(raw: Any, path: Path) -> tuple[str, list[tuple[str, str]]]:
    """(Definition[0], [(input, output[0])]) of one parsed task object."""
    if not isinstance(raw, dict) or not isinstance(raw.get("Instances"), list):
        raise DataFileError(f"{path}: not a Natural Instructions task; it needs "
                            "'Definition' and an 'Instances' list.")
    definition = _definition(raw, path)
    out = []
    for i, inst in enumerate(raw["Instances"]):
        where = f"{path}: Instances[{i}]"
        if not isinstance(inst, dict):
            raise DataFileError(f"{where} is not an object with 'input' and 'output'.")
        outputs = inst.get("output")
        if isinstance(outputs, str):
            outputs = [outputs]
        if not isinstance(inst.get("input"), str):
            raise DataFileError(f"{where}: field 'input' is missing or not text (the instance "
                                f"has {', '.join(repr(k) for k in inst)}).")
        if not isinstance(outputs, list) or not outputs or not isinstance(outputs[0], str):
            raise DataFileError(f"{where}: field 'output' is missing or not a non-empty list "
                                f"of strings (the instance has "
                                f"{', '.join(repr(k) for k in inst)}).")
        out.append((inst["input"], outputs[0]))
    return definition, out


def read_task(path: str | Path) -> tuple[str, list[tuple[str, str]]]:
    """(Definition[0], [(input, output[0])]) of one task file, no rules applied."""
    p = Path(path)
    try:
        with p.open(encoding="utf-8-sig") as fh:
            raw = json.load(fh)
    except json.JSONDecodeError as err:
        raise DataFileError(f"{p}: line {err.lineno} is not valid JSON ({err.msg}).") from None
    except UnicodeDecodeError as err:
        raise DataFileError(f"{p}: byte {err.start} is not UTF-8 text ({err.reason}); save "
                            "the file as UTF-8.") from None
    except (ValueError, RecursionError) as err:  # an int of > 4300 digits; deep nesting
        raise DataFileError(f"{p}: cannot be read as JSON ({type(err).__name__}); fix "
                            "it.") from None
    return task_instances(raw, p)


def task_examples(name: str, definition: str, pairs: list[tuple[str, str]]) -> list[Example]:
    return [Example(instruction=definition, input=i, output=o, category=name) for i, o in pairs]


def _listed(folder: Path, spec: str, stats: NIStats) -> list[str]:
    files = {p.stem for p in tasks_dir(folder).glob("*.json")}
    wanted = task_names(spec, folder)
    if wanted is None:
        wanted = sorted(files)
    stats.tasks_listed = len(wanted)
    present = [n for n in wanted if n in files]
    stats.tasks_missing = len(wanted) - len(present)
    if not present:
        raise DataFileError(f"None of the {len(wanted)} tasks listed by '{spec}' has a file in "
                            f"{tasks_dir(folder)}; check the folder and the list.")
    return sorted(present)


def _short(pairs: list[tuple[str, str]], rules: NIRules, stats: NIStats):
    keep = [p for p in pairs if len(p[0]) < rules.max_input_chars]
    stats.instances += len(pairs)
    stats.too_long += len(pairs) - len(keep)
    return keep


def load_train_tasks(folder: str | Path, spec: str, seed: int, rules: NIRules = NIRules(),
                     exclude: frozenset[str] = frozenset()) -> tuple[list[Example], NIStats]:
    """The training examples of the listed tasks (minus ``exclude``), after the rules."""
    folder = Path(folder)
    stats = NIStats("train")
    names = _listed(folder, spec, stats)
    held = [n for n in names if n in exclude]
    stats.tasks_held_out = len(held)
    out: list[Example] = []
    for name in names:
        if name in exclude:
            continue
        definition, pairs = read_task(tasks_dir(folder) / f"{name}.json")
        pairs = _short(pairs, rules, stats)
        if len(pairs) < rules.min_instances:
            stats.tasks_too_few += 1
            stats.in_dropped_tasks += len(pairs)
            continue
        k = max(1, int(len(pairs) * rules.sample_fraction))
        idx = sorted(rng(seed, "ni-train", name).choice(len(pairs), k, replace=False).tolist())
        stats.sampled_out += len(pairs) - k
        stats.kept += k
        stats.tasks_kept += 1
        out += task_examples(name, definition, [pairs[i] for i in idx])
    if not out:
        raise DataFileError(f"No Natural Instructions training task in {folder} is left after "
                            f"the rules ({stats.summary()}); list other tasks or relax "
                            "ni-min-instances / ni-max-input-chars.")
    log.info(stats.summary())
    return out, stats


def load_eval_tasks(folder: str | Path, spec: str, seed: int,
                    rules: NIRules = NIRules()) -> tuple[list[Example], NIStats]:
    """The held-out examples of the listed tasks: up to max(eval_min, eval_fraction * n)."""
    folder = Path(folder)
    stats = NIStats("eval")
    out: list[Example] = []
    for name in _listed(folder, spec, stats):
        definition, pairs = read_task(tasks_dir(folder) / f"{name}.json")
        pairs = _short(pairs, rules, stats)
        if len(pairs) > rules.eval_min:
            k = min(len(pairs), max(rules.eval_min, int(rules.eval_fraction * len(pairs))))
            idx = rng(seed, "ni-eval", name).choice(len(pairs), k, replace=False).tolist()
            stats.sampled_out += len(pairs) - k
            pairs = [pairs[i] for i in sorted(idx)]
        if pairs:
            stats.tasks_kept += 1
        else:
            stats.tasks_too_few += 1
        stats.kept += len(pairs)
        out += task_examples(name, definition, pairs)
    if not out:
        raise DataFileError(f"No Natural Instructions evaluation instance in {folder} is left "
                            f"after the rules ({stats.summary()}); list other tasks or raise "
                            "ni-max-input-chars.")
    log.info(stats.summary())
    return out, stats
