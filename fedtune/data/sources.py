"""What a ``data`` / ``eval-data`` value names, and the records it holds as examples or pairs.

A source is a data file or Hugging Face dataset (read by the record type:
:func:`fedtune.data.instructions.read_examples` or :func:`fedtune.data.preference.read_pairs`);
a Natural Instructions folder (:mod:`fedtune.data.natural_instructions`; instruction examples
only); or a FedIT folder of ``local_training_<i>.json`` files, one per client, with
``global_test.json`` as the server's held-out set. Who gets which records is
:mod:`fedtune.data.split`'s business.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TypeVar

from fedtune.data.config import DataConfig
from fedtune.data.natural_instructions import (
    NIRules,
    is_task_folder,
    load_eval_tasks,
    load_train_tasks,
    task_names,
    tasks_dir,
)
from fedtune.data.readers import DataFileError, is_hub_name
from fedtune.data.records import EXAMPLES, RecordType
from fedtune.seeding import rng

T = TypeVar("T")

CLIENT_FILE = re.compile(r"^local_training_(\d+)\.json$")
GLOBAL_TEST = "global_test.json"
CLIENT_FOLDER = "client-files"  # a folder of per-client files (the FedIT paper's Dolly split)


def kind(spec: str) -> str:
    """``ni``, ``client-files``, ``hub`` or ``file``: what a ``data`` / ``eval-data`` value
    names (``client-files``: a folder of ``local_training_<i>.json``, as FedIT split Dolly)."""
    p = Path(spec)
    if p.is_dir():
        if is_task_folder(p):
            return "ni"
        if client_files(p):
            return CLIENT_FOLDER
        raise DataFileError(f"Folder '{p}' holds neither Natural Instructions task files "
                            "(task*.json) nor local_training_<i>.json client files; pass one "
                            "of those folders or a data file.")
    return "hub" if is_hub_name(spec) else "file"


def client_files(folder: str | Path) -> list[Path]:
    """A FedIT folder's ``local_training_<i>.json`` files in client order (``[]`` if none)."""
    found = {int(m.group(1)): f for f in Path(folder).iterdir()
             if (m := CLIENT_FILE.match(f.name))}
    missing = sorted(set(range(len(found))) - set(found))
    if missing:
        raise DataFileError(f"{folder}: client files must be numbered local_training_0.json to "
                            f"local_training_{len(found) - 1}.json, but "
                            f"local_training_{missing[0]}.json is missing; renumber them.")
    return [found[i] for i in sorted(found)]


def ni_rules(cfg: DataConfig) -> NIRules:
    return NIRules(max_input_chars=cfg.ni_max_input_chars, min_instances=cfg.ni_min_instances,
                   sample_fraction=cfg.ni_sample_fraction, eval_min=cfg.ni_eval_min,
                   eval_fraction=cfg.ni_eval_fraction)


def _eval_task_folder(cfg: DataConfig) -> Path | None:
    """The Natural Instructions folder the evaluation tasks come from, if any."""
    if cfg.eval_data and Path(cfg.eval_data).is_dir() and kind(cfg.eval_data) == "ni":
        return Path(cfg.eval_data)
    if cfg.eval_tasks and not cfg.eval_data and kind(cfg.data) == "ni":
        return Path(cfg.data)
    if cfg.eval_tasks:
        raise DataFileError(f"eval-tasks='{cfg.eval_tasks}' selects Natural Instructions tasks, "
                            "but neither eval-data nor data is a task folder; point one of them "
                            "at the folder or clear eval-tasks.")
    return None


def _eval_task_names(cfg: DataConfig) -> frozenset[str]:
    folder = _eval_task_folder(cfg)
    if folder is None:
        return frozenset()
    names = task_names(cfg.eval_tasks, folder)
    return frozenset(names if names is not None else
                     (p.stem for p in tasks_dir(folder).glob("*.json")))


def _global_test(folder: Path) -> Path:
    path = folder / GLOBAL_TEST
    if not path.is_file():
        raise DataFileError(f"{folder} has local_training_<i>.json files but no {GLOBAL_TEST}; "
                            "set eval-data to a held-out file.")
    return path


def _examples_only(records: RecordType, folder: str | Path) -> None:
    if records is not EXAMPLES:
        raise DataFileError(f"{folder} is a Natural Instructions folder, which holds "
                            f"instruction examples, not {records.name}; pass a file of "
                            f"{records.name} instead.")


def separate_held_out(cfg: DataConfig) -> bool:
    """Whether the server's held-out set comes from elsewhere than a slice of ``data``."""
    return (bool(cfg.eval_data) or _eval_task_folder(cfg) is not None
            or kind(cfg.data) == CLIENT_FOLDER)


def held_out_source(cfg: DataConfig, records: RecordType[T], seed: int) -> list[T]:
    """The server's held-out set when :func:`separate_held_out`: a Natural Instructions
    folder's evaluation tasks (``eval-tasks``; from ``eval-data``, else from ``data``), all of
    them; else the first ``eval-examples`` of ``eval-data`` (a FedIT folder: its
    ``global_test.json``) or of the FedIT ``data`` folder's ``global_test.json``."""
    folder = _eval_task_folder(cfg)
    if folder is not None:
        _examples_only(records, folder)
        return load_eval_tasks(folder, cfg.eval_tasks, seed, ni_rules(cfg))[0]
    path = cfg.eval_data or cfg.data
    if Path(path).is_dir() and kind(path) == CLIENT_FOLDER:
        path = str(_global_test(Path(path)))
    return records.read(path, cfg.data_fields)[: cfg.eval_examples]


def all_records(cfg: DataConfig, records: RecordType[T], seed: int) -> list[T]:
    """Every record of ``data``, in source order (a Natural Instructions folder: its training
    tasks after the rules, evaluation tasks excluded; a FedIT folder: its client files in
    turn)."""
    source = kind(cfg.data)
    if source == "ni":
        _examples_only(records, cfg.data)
        return load_train_tasks(cfg.data, cfg.data_tasks, seed, ni_rules(cfg),
                                exclude=_eval_task_names(cfg))[0]
    if source == CLIENT_FOLDER:
        return [r for f in client_files(cfg.data) for r in records.read(f, cfg.data_fields)]
    return records.read(cfg.data, cfg.data_fields)


def method(cfg: DataConfig) -> str:
    """The partitioner ``partition=auto`` resolves to: one client per file (``files``) for a
    FedIT folder, one per task (``natural``) for a Natural Instructions folder, else ``iid``."""
    if cfg.partition != "auto":
        return cfg.partition
    return {CLIENT_FOLDER: "files", "ni": "natural"}.get(kind(cfg.data), "iid")


def client_file(cfg: DataConfig, records: RecordType[T], partition_id: int,
                num_partitions: int, seed: int) -> list[T]:
    """``partition=files``: FedIT client ``partition_id``'s own file, in a seeded order."""
    files = client_files(cfg.data)
    if len(files) != num_partitions:
        raise DataFileError(f"{cfg.data} holds {len(files)} client files (local_training_0.json "
                            f"to local_training_{len(files) - 1}.json) but the run has "
                            f"{num_partitions} clients; run with {len(files)} clients.")
    mine = records.read(files[partition_id], cfg.data_fields)
    order = rng(seed, "files", partition_id).permutation(len(mine)).tolist()
    return [mine[i] for i in order]
