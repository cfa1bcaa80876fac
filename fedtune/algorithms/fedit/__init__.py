"""FedIT (Zhang et al., "Towards Building the Federated GPT: Federated Instruction Tuning",
ICASSP 2024): clients train LoRA adapters locally; a server strategy aggregates them.

``config`` (the ``lora-*`` section), ``adapter`` (peft adapters <-> named arrays), ``model``
(the process's LoRA model), ``client`` and ``server`` (the two sides), ``dpo`` (the fixed
reference of a DPO run); the ``lora-aggregation`` variants (FedIT, FFA-LoRA, FedSA-LoRA, FLoRA,
FedEx-LoRA) in ``variants``, their math in ``factors`` and FLoRA's/FedEx-LoRA's merged base in
``merged``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedtune.algorithms.base import Algorithm
from fedtune.algorithms.fedit.config import AGGREGATIONS

if TYPE_CHECKING:
    from pathlib import Path

    from fedtune.algorithms.base import ClientHook
    from fedtune.config import Config


def _client(cfg: Config, hook: ClientHook | None = None):
    from fedtune.algorithms.fedit.client import FedITClient

    return FedITClient(cfg, hook)


def _simulation_setup(cfg: Config) -> None:
    """Before the engine starts: ``lora-target-modules`` must fit the model (one sentence)."""
    if not cfg.train.init_adapter:  # a saved adapter brings its own targets
        from fedtune.models.targets import check_targets

        check_targets(cfg.model.model, cfg.lora.lora_target_modules)


def _server(cfg: Config):
    from fedtune.algorithms.fedit.server import FedITServer

    return FedITServer(cfg)


def load_result(run_dir: Path):
    """The adapter merged into its base; FLoRA/FedEx-LoRA (whose base moved) saved the merged
    model instead."""
    from fedtune.models.saved import load_adapter_folder, load_model_folder

    if (run_dir / "adapter").is_dir():
        return load_adapter_folder(run_dir / "adapter")
    return load_model_folder(run_dir / "model")


FEDIT = Algorithm(
    name="fedit",
    summary="LoRA adapters trained locally, aggregated by a Flower strategy "
            f"(lora-aggregation: {', '.join(AGGREGATIONS)})",
    payload="arrays",
    client=_client,
    server=_server,
    simulation_setup=_simulation_setup,
    client_hooks=True,  # FedITClient runs the strategy's client half (SCAFFOLD)
    sections=("lora",),
    load_result=load_result,
)
