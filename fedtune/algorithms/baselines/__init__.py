"""Baselines without federation, on the same model, data, schedule and evaluation as FedIT:
``local`` (every client alone) and ``centralized`` (all data pooled). They run in one process
through ``fedtune simulate`` (``run.py``), never through Flower."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedtune.algorithms.base import Algorithm
from fedtune.algorithms.fedit import load_result  # the pooled run saves one adapter

if TYPE_CHECKING:
    from pathlib import Path

    from fedtune.config import Config


def _local(cfg: Config, num_clients: int) -> Path:
    from fedtune.algorithms.baselines.run import run_local

    return run_local(cfg, num_clients)


def _centralized(cfg: Config, num_clients: int) -> Path:
    from fedtune.algorithms.baselines.run import run_centralized

    return run_centralized(cfg, num_clients)


LOCAL = Algorithm(name="local", summary="each client trains alone (FedIT's local rounds)",
                  federated=False, run=_local, objectives=("sft",), sections=("lora",))
CENTRALIZED = Algorithm(name="centralized", summary="all clients' data pooled in one place",
                        federated=False, run=_centralized, objectives=("sft",),
                        sections=("lora",), load_result=load_result)
