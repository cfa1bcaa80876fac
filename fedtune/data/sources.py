"""What ``data`` and ``eval-data`` point to, and which examples the server and each client get.

Sources: a data file or Hugging Face dataset (:func:`fedtune.data.files.read_examples`); a
Natural Instructions folder (:mod:`fedtune.data.natural_instructions`); or a FedIT folder of
``local_training_<i>.json`` files, one per client, with ``global_test.json`` as the server's
held-out set.

Server held-out set, first match: the evaluation tasks of a Natural Instructions folder
(``eval-tasks``; from ``eval-data``, else from ``data``); the ``eval-data`` file (its first
``eval-examples``); a FedIT folder's ``global_test.json``; else the first ``eval-examples`` of
the seeded shuffle of ``data``, which then never reach a client.

Clients (``partition``): ``auto`` is one client per file for a FedIT folder, one client per
task (``natural``) for a Natural Instructions folder and ``iid`` otherwise; any other value
pools the training examples and applies that partitioner.
"""

from __future__ import annotations

import functools
import logging
import re
from dataclasses import astuple
from pathlib import Path

from fedtune.config import DataConfig
from fedtune.data.example import Example
from fedtune.data.files import read_examples
from fedtune.data.natural_instructions import (
    NIRules,
    is_task_folder,
    load_eval_tasks,
    load_train_tasks,
    task_names,
    tasks_dir,
)
from fedtune.data.partition import iid_partition, partition
from fedtune.data.readers import DataFileError, is_hub_name
from fedtune.seeding import rng

log = logging.getLogger("fedtune")

CLIENT_FILE = re.compile(r"^local_training_(\d+)\.json$")
GLOBAL_TEST = "global_test.json"


def kind(spec: str) -> str:
    """``ni``, ``fedit``, ``hub`` or ``file``: what a ``data`` / ``eval-data`` value names."""
    p = Path(spec)
    if p.is_dir():
        if is_task_folder(p):
            return "ni"
        if client_files(p):
            return "fedit"
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


def _separate_eval(cfg: DataConfig) -> bool:
    """Whether the server's held-out set comes from elsewhere than a slice of ``data``."""
    return bool(cfg.eval_data) or _eval_task_folder(cfg) is not None or kind(cfg.data) == "fedit"


def _global_test(folder: Path) -> Path:
    path = folder / GLOBAL_TEST
    if not path.is_file():
        raise DataFileError(f"{folder} has local_training_<i>.json files but no {GLOBAL_TEST}; "
                            "set eval-data to a held-out file.")
    return path


def eval_examples(cfg: DataConfig, seed: int) -> list[Example]:
    """The server's held-out set (see the module docstring for the rules)."""
    folder = _eval_task_folder(cfg)
    if folder is not None:
        return load_eval_tasks(folder, cfg.eval_tasks, seed, ni_rules(cfg))[0]
    if cfg.eval_data:
        path = cfg.eval_data
        if Path(path).is_dir() and kind(path) == "fedit":
            path = str(_global_test(Path(path)))
        return read_examples(path, cfg.data_fields)[: cfg.eval_examples]
    if kind(cfg.data) == "fedit":
        return read_examples(_global_test(Path(cfg.data)), cfg.data_fields)[: cfg.eval_examples]
    return _shuffled(cfg, seed)[: cfg.eval_examples]


def _all_examples(cfg: DataConfig, seed: int) -> list[Example]:
    source = kind(cfg.data)
    if source == "ni":
        return load_train_tasks(cfg.data, cfg.data_tasks, seed, ni_rules(cfg),
                                exclude=_eval_task_names(cfg))[0]
    if source == "fedit":
        return [e for f in client_files(cfg.data) for e in read_examples(f, cfg.data_fields)]
    return read_examples(cfg.data, cfg.data_fields)


def _shuffled(cfg: DataConfig, seed: int) -> list[Example]:
    return iid_partition(_all_examples(cfg, seed), 1, seed)[0]


def train_pool(cfg: DataConfig, seed: int) -> list[Example]:
    """Every training example, server held-out examples excluded."""
    if _separate_eval(cfg):
        return _all_examples(cfg, seed)
    pool = _shuffled(cfg, seed)[cfg.eval_examples:]
    if not pool:
        raise DataFileError(f"{cfg.data}: all of its examples went to the server's held-out set "
                            f"(eval-examples={cfg.eval_examples}); lower eval-examples or give "
                            "eval-data.")
    return pool


def method(cfg: DataConfig) -> str:
    """The partitioner ``partition=auto`` resolves to (``files`` for a FedIT folder)."""
    if cfg.partition != "auto":
        return cfg.partition
    return {"fedit": "files", "ni": "natural"}.get(kind(cfg.data), "iid")


@functools.lru_cache(maxsize=4)
def _parts(key: tuple, num_partitions: int, seed: int) -> list[list[Example]]:
    cfg = DataConfig(*key)
    how = method(cfg)
    pool = train_pool(cfg, seed)
    parts = partition(pool, num_partitions, seed, how, cfg.partition_by, cfg.dirichlet_alpha,
                      cfg.shards_per_client)
    sizes = sorted(map(len, parts))
    log.info(f"Partitioned {len(pool)} examples of {cfg.data} into {num_partitions} clients "
             f"({how}): sizes {sizes[0]} to {sizes[-1]}, median {sizes[len(sizes) // 2]}.")
    return parts


def _file_client(cfg: DataConfig, partition_id: int, num_partitions: int,
                 seed: int) -> list[Example]:
    files = client_files(cfg.data)
    if len(files) != num_partitions:
        raise DataFileError(f"{cfg.data} holds {len(files)} client files (local_training_0.json "
                            f"to local_training_{len(files) - 1}.json) but the run has "
                            f"{num_partitions} clients; run with {len(files)} clients.")
    examples = read_examples(files[partition_id], cfg.data_fields)
    order = rng(seed, "files", partition_id).permutation(len(examples)).tolist()
    return [examples[i] for i in order]


def client_examples(cfg: DataConfig, partition_id: int, num_partitions: int,
                    seed: int) -> list[Example]:
    """All examples of one client (training and its own held-out share), seeded order."""
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition id {partition_id} outside [0, {num_partitions})")
    if method(cfg) == "files":
        return _file_client(cfg, partition_id, num_partitions, seed)
    return list(_parts(astuple(cfg), num_partitions, seed)[partition_id])
