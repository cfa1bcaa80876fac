"""The ``data`` config section: where the data is, how it is split, and the ``data-fields``
mapping onto fedtune's record fields."""

from __future__ import annotations

from dataclasses import dataclass

from fedtune.errors import ConfigError, at_least_one, one_of, require

PARTITIONS = ("auto", "iid", "dirichlet", "natural", "shards")
LABEL_FIELDS = ("category", "instruction", "input", "output")
TARGETS = ("instruction", "input", "output", "category", "messages",
           "prompt", "chosen", "rejected")  # the last three: preference data (DPO)


# other tools' names for fedtune's targets, for the error that names the right one
ALIASES = {"response": "output", "answer": "output", "completion": "output",
           "query": "input", "context": "input", "question": "instruction",
           "conversations": "messages"}


def _unknown_target(target: str) -> str:
    alias = ALIASES.get(target)
    hint = f" ('{target}' is fedtune's '{alias}')" if alias else ""
    return (f"data-fields names '{target}', which is not one of {', '.join(TARGETS)}{hint}; "
            "map those to your file's fields.")


def parse_fields(text: str) -> dict[str, str]:
    """``"instruction=question,output=answer"`` -> ``{"instruction": "question", ...}``; a
    field may be a dotted path into nested values (``conversations.0.value``, see
    :mod:`fedtune.data.fields`)."""
    out: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        target, sep, source = (s.strip() for s in item.partition("="))
        if not sep or not target or not source:
            raise ValueError(f"data-fields item '{item}' is not target=field; write e.g. "
                             "'instruction=question,output=answer'.")
        if target not in TARGETS:
            raise ValueError(_unknown_target(target))
        if target in out:
            raise ValueError(f"data-fields maps '{target}' twice; keep one.")
        out[target] = source
    return out


@dataclass
class DataConfig:
    # "builtin" (synthetic tasks); a .json/.jsonl/.csv(.gz)/.parquet file; a Hugging Face
    # dataset name; a Natural Instructions folder; or a folder of local_training_<i>.json files
    data: str = "builtin"
    eval_data: str = ""  # centralized held-out file/folder; default: a seeded sample of `data`
    examples_per_client: int = 160  # built-in data: training examples per client
    eval_examples: int = 96  # held-out examples for centralized evaluation (all categories)
    client_eval_examples: int = 16  # held-out examples per client for federated evaluation
    # map your fields to `instruction`, `input`, `output`, `category` or `messages`, e.g.
    # `instruction=question,output=answer,category=topic`
    data_fields: str = ""
    # auto (one client per file of a local_training_<i>.json folder, per task for Natural
    # Instructions, else iid), iid, dirichlet, natural (one client per partition-by value) or
    # shards; built-in data keeps its own split
    partition: str = "auto"
    partition_by: str = "category"  # the record field that labels dirichlet/natural/shards
    # Dirichlet concentration: smaller means stronger label skew per client
    dirichlet_alpha: float = 0.5
    shards_per_client: int = 2  # shards: label-sorted shards per client (the FedIT split)
    # Natural Instructions: training tasks, a list file (a path, or relative to `data`) or a comma
    # list; empty = every task file
    data_tasks: str = ""
    # Natural Instructions: held-out tasks for the server (from `eval-data`, else `data`), never
    # trained on
    eval_tasks: str = ""
    # Natural Instructions: keep instances whose input is shorter than this (FedKSeed)
    ni_max_input_chars: int = 1024
    # Natural Instructions: keep training tasks with at least this many instances (FedKSeed)
    ni_min_instances: int = 20
    # Natural Instructions: share of each training task's instances sampled, seeded (FedKSeed)
    ni_sample_fraction: float = 0.2
    # Natural Instructions: held-out instances per task, up to max(`ni-eval-min`, `ni-eval-fraction`
    # × n); `eval-examples` does not cap them
    ni_eval_min: int = 20
    # Natural Instructions: see `ni-eval-min` (FedKSeed: max(20, 2%))
    ni_eval_fraction: float = 0.02

    def validate(self) -> None:
        at_least_one(examples_per_client=self.examples_per_client,
                     shards_per_client=self.shards_per_client,
                     ni_max_input_chars=self.ni_max_input_chars)
        one_of("partition", self.partition, PARTITIONS)
        one_of("partition-by", self.partition_by, LABEL_FIELDS)
        require(self.dirichlet_alpha > 0,
                f"dirichlet-alpha={self.dirichlet_alpha} must be positive.")
        for key, val in (("eval-examples", self.eval_examples),
                         ("client-eval-examples", self.client_eval_examples),
                         ("ni-min-instances", self.ni_min_instances),
                         ("ni-eval-min", self.ni_eval_min)):
            require(val >= 0, f"{key}={val} must be >= 0.")
        for key, val in (("ni-sample-fraction", self.ni_sample_fraction),
                         ("ni-eval-fraction", self.ni_eval_fraction)):
            require(0 < val <= 1, f"{key}={val} must be in (0, 1].")
        try:
            parse_fields(self.data_fields)
        except ValueError as err:
            raise ConfigError(str(err)) from None
