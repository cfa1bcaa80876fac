"""Run a whole job on a Grid: the algorithm, its strategy chain, resume, the rounds; the run
folder, progress and finish are :class:`fedtune.driver.RunDriver`'s."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from flwr.serverapp import Grid

from fedtune.algorithms import Algorithm, resolve
from fedtune.checkpoint import (
    Checkpoint,
    CheckpointError,
    config_changes,
    config_fingerprint,
    load_checkpoint,
    save_checkpoint,
    strategy_state,
)
from fedtune.config import Config
from fedtune.driver import RunDriver
from fedtune.errors import ConfigError
from fedtune.flower.loop import first_refresh, run_rounds
from fedtune.flower.registry import WAIT_FOR_NODES, NodeRegistry
from fedtune.privacy.randomness import WARNING, announce
from fedtune.seeding import deterministic_cuda
from fedtune.strategies import build_strategy
from fedtune.strategies.hooks import hooks_of


def run_server(grid: Grid, cfg: Config, run_id: int = 0) -> Path:
    """Everything the ServerApp does; returns the run folder.

    The algorithm comes from the registry, its strategy from the strategy registry. With
    ``resume`` set, the run continues in that folder from its last checkpoint. ``run_id``:
    Flower's (secure aggregation binds its keys to it).
    """
    algorithm = resolve(cfg)
    deterministic_cuda(cfg.model.deterministic, cfg.model.device)  # before any CUDA work
    if not algorithm.federated:
        raise ConfigError(f"'{algorithm.name}' is a baseline without federation; run it with "
                          f"`fedtune simulate --algorithm {algorithm.name}`.")
    registry = NodeRegistry(grid, timeout=cfg.server.round_timeout)
    registry.refresh_early(first_refresh(cfg), WAIT_FOR_NODES)  # while the model builds
    try:
        return _run(grid, cfg, algorithm, registry, run_id)
    finally:
        registry.stop()


def _run(grid: Grid, cfg: Config, algorithm: Algorithm, registry: NodeRegistry,
         run_id: int) -> Path:
    algo = algorithm.server(cfg)
    strategy = build_strategy(cfg, algorithm.payload, algo)
    flat = cfg.to_flat()
    hooks = hooks_of(strategy)
    hooks.bind_run(run_id, config_fingerprint(flat))
    if (cfg.privacy.enabled or cfg.secagg.enabled) and announce():
        print(f"fedtune: WARNING: {WARNING}.", flush=True)
    resume_from, rows = None, None
    if cfg.output.resume:
        ckpt = load_checkpoint(Path(cfg.output.resume))
        changes = config_changes(ckpt.config, flat)
        if changes:
            raise CheckpointError(f"cannot resume '{cfg.output.resume}' with another config ("
                                  + "; ".join(changes) + "): pass the original run's config")
        algo.load_state_dict(ckpt.algorithm)
        strategy.load_state_dict(ckpt.strategy)
        resume_from, rows = (ckpt.round, ckpt.arrays), ckpt.rows
    run = RunDriver(cfg, f"{cfg.train.algorithm}/{cfg.train.objective} on '{cfg.model.model}'",
                    resume_rows=rows)

    def on_checkpoint(rnd: int, arrays: dict[str, np.ndarray]) -> None:
        save_checkpoint(run.dir, Checkpoint(rnd, flat, arrays, algo.state_dict(),
                                            strategy_state(strategy), run.rows))

    arrays = run_rounds(grid, cfg, algo, strategy, run.log, resume_from=resume_from,
                        on_checkpoint=on_checkpoint, registry=registry)
    return run.finish(algo.save(arrays, run.dir), cfg.model.model, hooks.final_report())
