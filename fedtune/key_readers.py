"""Who reads which config key, derived from what the registries declare (an algorithm's
``sections``; a strategy's ``reads`` and ``section``), so a key set for a method that ignores it
is refused by :mod:`fedtune.compat` instead of silently doing nothing."""

from __future__ import annotations

import functools
from dataclasses import fields
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fedtune.config import Config


def _key(name: str) -> str:
    return name.replace("_", "-")


#: keys of a section that only a federated reader uses (the baselines run FedIT's local rounds
#: and aggregate nothing)
FEDERATED_ONLY = frozenset({"lora-aggregation", "lora-restart-init"})


@functools.cache
def key_readers() -> dict[str, tuple[str, ...]]:
    """Key of a method section -> the algorithms that read it, from what the registries declare
    (an algorithm's ``sections``; a strategy's ``section``, read by every algorithm whose payload
    it aggregates). Any other algorithm refuses a non-default value: a key that is accepted and
    ignored looks like it did something. The framework's own sections are read by every
    algorithm or checked by their own rules (``init-adapter``)."""
    from fedtune.algorithms import REGISTRY
    from fedtune.config import SECTIONS
    from fedtune.strategies import REGISTRY as STRATEGIES

    readers: dict[str, list[str]] = {}
    for algo in REGISTRY.values():
        mine = set(algo.sections) | {e.section for (kind, _), e in STRATEGIES.items()
                                     if e.section and kind == algo.payload and algo.federated}
        for section in sorted(mine):
            for f in fields(SECTIONS[section]):
                key = _key(f.name)
                if key not in FEDERATED_ONLY or algo.federated:
                    readers.setdefault(key, []).append(algo.name)
    return {key: tuple(names) for key, names in readers.items()}


@functools.cache
def strategy_key_readers() -> dict[str, tuple[str, ...]]:
    """Parameter of the ``strategy`` section -> the strategies that read it (their ``reads``)."""
    from fedtune.strategies import REGISTRY as STRATEGIES

    readers: dict[str, list[str]] = {}
    for entry in STRATEGIES.values():
        for key in entry.reads:
            readers.setdefault(key, []).append(entry.name)
    return {key: tuple(names) for key, names in readers.items()}


def changed_keys(cfg: Config, section: str) -> list[str]:
    """The keys of ``section`` set to a non-default value."""
    from fedtune.config import SECTIONS

    cls = SECTIONS[section]
    default, ours = cls(), getattr(cfg, section)
    return [_key(f.name) for f in fields(cls)
            if getattr(ours, f.name) != getattr(default, f.name)]


def foreign_keys(cfg: Config, algorithm: str) -> list[str]:
    """The keys set to a non-default value that ``algorithm`` does not read."""
    from fedtune.config import SECTIONS

    readers = key_readers()
    return [key for section in SECTIONS for key in changed_keys(cfg, section)
            if key in readers and algorithm not in readers[key]]
