"""Per-round checkpoints of the whole server state, written atomically, for exact resume.

A checkpoint is one ``checkpoint.npz`` in the run folder, replaced after every round (write to a
temporary file in the same folder, fsync, rename): a crash leaves either the previous round's
checkpoint or this one, never a torn file. It holds

- the round it closes and the run's flat config (resume refuses a different config),
- the global arrays (FedIT: the float32 adapter; FedKSeed: the accumulated vector A),
- the algorithm's own state (FedKSeed: Pro statistics, server momentum),
- the strategy's state (FedOpt moments, FedAvgM momentum, SCAFFOLD's c, ...),
- the metrics rows so far (``metrics.jsonl`` is rewritten from them on resume).

Sampling needs no state: each round's sample and each client's batches come from generators
seeded by (run seed, round, node name), so a resumed round draws exactly what it would have.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord

CHECKPOINT = "checkpoint.npz"

# Strategy attributes that change between rounds, across Flower's strategies and fedtune's:
# FedOpt family (FedAdam, FedYogi, FedAdagrad): current_arrays, m_t, v_t; FedAvgM:
# current_arrays, momentum_vector; SCAFFOLD: control. Everything else is configuration.
STRATEGY_STATE = ("current_arrays", "m_t", "v_t", "momentum_vector", "control")

# Keys that may differ between the original run and its resumption: where results go and how
# long to wait, nothing that changes what is computed.
RESUMABLE_CHANGES = frozenset({"resume", "run-dir", "output-dir", "run-name", "round-timeout",
                               "zo-cache-dir", "device"})


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
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
        raise CheckpointError(f"cannot read {path}: {err}") from err
    return Checkpoint(int(meta["round"]), meta["config"], parts["arrays"], parts["algorithm"],
                      parts["strategy"], meta["rows"])


def config_changes(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """The keys whose value differs and matters, as ``key: saved -> now`` lines."""
    keys = sorted((set(saved) | set(now)) - RESUMABLE_CHANGES)
    return [f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in keys
            if saved.get(k) != now.get(k)]


# ---- strategy state ------------------------------------------------------------------------
def strategy_state(strategy: object) -> dict[str, np.ndarray]:
    """The strategy's round-to-round state as flat arrays (``attr/kind/key``)."""
    out: dict[str, np.ndarray] = {}
    for attr in STRATEGY_STATE:
        value = getattr(strategy, attr, None)
        if value is None:
            continue
        if isinstance(value, ArrayRecord):
            out.update({f"{attr}/record/{k}": v.numpy() for k, v in value.items()})
        elif isinstance(value, dict):
            out.update({f"{attr}/dict/{k}": np.asarray(v) for k, v in value.items()})
        elif isinstance(value, list):
            out.update({f"{attr}/list/{i:06d}": np.asarray(v) for i, v in enumerate(value)})
        else:
            out[f"{attr}/array/"] = np.asarray(value)
    return out


def load_strategy_state(strategy: object, state: dict[str, np.ndarray]) -> None:
    """Inverse of :func:`strategy_state` (the strategy is freshly built from the same config)."""
    grouped: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    for name, value in state.items():
        attr, kind, key = name.split("/", 2)
        grouped.setdefault((attr, kind), {})[key] = value
    for (attr, kind), values in grouped.items():
        if not hasattr(strategy, attr):
            raise CheckpointError(f"the checkpoint has strategy state '{attr}' that "
                                  f"{type(strategy).__name__} does not keep")
        if kind == "record":
            setattr(strategy, attr, ArrayRecord({k: Array(v) for k, v in values.items()}))
        elif kind == "dict":
            setattr(strategy, attr, dict(values))
        elif kind == "list":
            setattr(strategy, attr, [values[k] for k in sorted(values)])
        else:
            setattr(strategy, attr, values[""])
