"""Per-round checkpoints of the whole server state, written atomically, for exact resume.

A checkpoint is one ``checkpoint.npz`` in the run folder, replaced after every round (write to a
temporary file in the same folder, fsync, rename): a crash leaves either the previous round's
checkpoint or this one, never a torn file. It holds

- the round it closes and the run's flat config (resume refuses a different config),
- the global arrays (FedIT: the float32 adapter; FedKSeed: the accumulated vector A),
- the algorithm's own state (FedKSeed: the seeds' Pro statistics),
- the strategy's ``state_dict()`` (FedOpt moments, FedAvgM momentum, SCAFFOLD's c, FedKSeed's
  server momentum, ...),
- the metrics rows so far (``metrics.jsonl`` is rewritten from them on resume).

Sampling needs no state: each round's sample and each client's batches come from generators
seeded by (run seed, round, node name), so a resumed round draws exactly what it would have.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

CHECKPOINT = "checkpoint.npz"

# Keys that may differ between the original run and its resumption: where results go and how
# long to wait, nothing that changes what is computed (report-to: a resumed run may add a
# tracker, which then gets the rounds so far).
RESUMABLE_CHANGES = frozenset({"resume", "run-dir", "output-dir", "run-name", "round-timeout",
                               "cache-dir", "node-state-dir", "device", "report-to"})


class CheckpointError(RuntimeError):
    """A run cannot be resumed (no checkpoint, unreadable, or another config)."""


@dataclass
class Checkpoint:
    round: int
    config: dict[str, Any]  # flat config of the run
    arrays: dict[str, np.ndarray]
    algorithm: dict[str, np.ndarray]
    strategy: dict[str, np.ndarray]
    rows: list[dict[str, Any]]


def save_checkpoint(run_dir: Path, ckpt: Checkpoint) -> Path:
    """Atomically replace ``run_dir/checkpoint.npz``."""
    run_dir = Path(run_dir)
    meta = {"round": ckpt.round, "config": ckpt.config, "rows": ckpt.rows}
    payload = {"meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)}
    for part in ("arrays", "algorithm", "strategy"):
        for key, value in getattr(ckpt, part).items():
            payload[f"{part}/{key}"] = np.asarray(value)
    fd, tmp = tempfile.mkstemp(prefix=".checkpoint-", suffix=".npz", dir=run_dir)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **payload)
            fh.flush()
            os.fsync(fh.fileno())
        target = run_dir / CHECKPOINT
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(run_dir, os.O_RDONLY)
    try:  # make the rename itself durable
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return target


def load_checkpoint(run_dir: str | Path) -> Checkpoint:
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        raise CheckpointError(f"cannot resume '{run_dir}': it has no {CHECKPOINT} (give the run "
                              "folder of a run that completed at least round 0)")
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(data["meta"].tobytes().decode())
            parts: dict[str, dict[str, np.ndarray]] = {"arrays": {}, "algorithm": {},
                                                       "strategy": {}}
            for name in data.files:
                part, _, key = name.partition("/")
                if part in parts:
                    parts[part][key] = data[name]
        config, rows = meta["config"], meta["rows"]
        if not isinstance(config, dict) or not isinstance(rows, list):
            raise ValueError("its meta record holds no run config and rows")
        ckpt = Checkpoint(int(meta["round"]), config, parts["arrays"], parts["algorithm"],
                          parts["strategy"], rows)
    except (OSError, EOFError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as err:
        # TypeError/KeyError/ValueError: a readable file whose meta record is not fedtune's
        raise CheckpointError(f"cannot read {path} ({type(err).__name__}: {err}); it is "
                              "damaged, so resume from a copy or start the run again") from err
    return ckpt


def config_fingerprint(flat: dict[str, Any]) -> str:
    """A short hash of what a run computes (its config minus :data:`RESUMABLE_CHANGES`): the
    same for a run and its resumption, different for another config."""
    kept = {k: v for k, v in sorted(flat.items()) if k not in RESUMABLE_CHANGES}
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:12]


def config_changes(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """The keys whose value differs and matters, as ``key: saved -> now`` lines. A key the
    saved run did not have (added by a later fedtune) counts as its default: a new key's
    default keeps what earlier versions computed."""
    from fedtune.config import Config

    defaults = Config.from_flat({}).to_flat()
    keys = sorted((set(saved) | set(now)) - RESUMABLE_CHANGES)
    before = {k: saved[k] if k in saved else defaults.get(k) for k in keys}
    return [f"{k}: {before[k]!r} -> {now.get(k)!r}" for k in keys if before[k] != now.get(k)]


# ---- strategy state ------------------------------------------------------------------------
def strategy_state(strategy: object) -> dict[str, np.ndarray]:
    """The strategy's round-to-round state; a strategy without ``state_dict()`` cannot be
    checkpointed, and saying so beats a resumed run that silently lost its state."""
    if not hasattr(strategy, "state_dict"):
        raise CheckpointError(f"{type(strategy).__name__} has no state_dict(): give it "
                              "state_dict()/load_state_dict() (fedtune.strategies.state) so "
                              "its state survives a resume")
    return strategy.state_dict()
