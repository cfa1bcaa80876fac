"""Small runs whose metrics and final model are recorded in ``tests/reference/behaviour.json``.

A behaviour-preserving change (a refactor) must reproduce them bit for bit:
``test_behaviour.py`` runs every case and compares. Each case goes through the real entry
points only (the ServerApp's ``main`` on an in-process Grid of ClientApps, or ``fedtune
simulate`` for the in-process baselines), so the cases outlive any internal API.

Re-record (only in a change that alters behaviour on purpose, and say so in its note):
``python -m tests.behaviour_cases`` from the project folder.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

REFERENCE = Path(__file__).with_name("reference") / "behaviour.json"


def reference_path() -> Path:
    """The reference for this CPU's kernel family. torch's AVX2 and AVX-512 kernels round
    float sums differently in the last bits, so a machine whose capability has its own file
    (``behaviour-avx2.json``, recorded with the code of the reference before the plug-in work
    on an AVX2 machine) is compared with that; any other with ``behaviour.json``."""
    import torch

    own = REFERENCE.with_name(f"behaviour-{torch.backends.cpu.get_cpu_capability().lower()}.json")
    return own if own.exists() else REFERENCE

BASE = {"local-steps": 3, "examples-per-client": 24, "eval-examples": 12,
        "client-eval-examples": 6, "max-new-tokens": 3, "num-server-rounds": 2,
        "lr-schedule": "cosine", "min-train-nodes": 2, "min-available-nodes": 3,
        "fraction-train": 0.7, "fraction-evaluate": 0.5, "seed": 3}
ZO = {"zo-seeds": 64, "zo-steps": 6, "batch-size": 2}
CASES: dict[str, dict[str, Any]] = {
    "fedit-sft": {},
    "fedit-dpo": {"objective": "dpo"},
    "fedit-scaffold": {"strategy": "scaffold"},
    "fedit-fedadam": {"strategy": "fedadam", "server-lr": 0.01},
    "fedit-fedprox": {"strategy": "fedprox", "prox-mu": 0.5},
    "fedit-fedtrimmedavg": {"strategy": "fedtrimmedavg", "fraction-train": 1.0},
    "fedkseed": {"algorithm": "fedkseed", **ZO},
    "fedkseed-pro": {"algorithm": "fedkseed-pro", **ZO, "num-server-rounds": 3,
                     "seeds-server-momentum": 0.5, "seeds-robust-clip": 3.0},
    "fedkseed-dpo": {"algorithm": "fedkseed", "objective": "dpo", **ZO},
    "local": {"algorithm": "local", "num-server-rounds": 1},
    "centralized": {"algorithm": "centralized", "num-server-rounds": 1},
}
BASELINES = ("local", "centralized")
NODES = 3


def _rows(run_dir: Path) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if "seconds" not in k} for r in rows]


FEDKSEED_MODEL = ("seeds", "accumulated", "lr", "eps", "pro_abs_sums", "pro_counts")


def _model_digest(run_dir: Path) -> str:
    """sha256 over the final model's arrays (adapter tensors, or what defines FedKSeed's model:
    the seeds, A, lr and eps, and the seeds' statistics)."""
    h = hashlib.sha256()
    state = run_dir / "fedkseed-state.npz"
    if state.exists():
        with np.load(state) as data:
            for key in FEDKSEED_MODEL:
                h.update(key.encode() + data[key].tobytes())
        return h.hexdigest()
    from safetensors.numpy import load_file

    adapters = sorted(run_dir.glob("**/adapter_model.safetensors"))
    for path in adapters:
        for key, value in sorted(load_file(path).items()):
            h.update(key.encode() + value.tobytes())
    return h.hexdigest()


def run_case(name: str, where: Path) -> dict[str, Any]:
    """Run one case in ``where``; returns its metrics rows and the final model's digest."""
    flat = {**BASE, **CASES[name], "run-dir": str(where / name)}
    if name in BASELINES:
        from fedtune.cli import main

        overrides = " ".join(f"{k}={json.dumps(v)}" for k, v in flat.items())
        assert main(["simulate", "--num-clients", str(NODES), "--run-config", overrides]) == 0
    else:
        from flwr.app import Context, RecordDict

        from client_app.app import app as client_app
        from server_app.app import main
        from tests.inprocess_grid import InProcessGrid

        if flat.get("algorithm", "").startswith("fedkseed"):
            flat["cache-dir"] = str(where / name / "zo-cache")
        grid = InProcessGrid(client_app, NODES, flat)
        main(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                           run_config=flat))
    run_dir = where / name
    return {"rows": _rows(run_dir), "model": _model_digest(run_dir)}


def record(names: list[str] | None = None) -> None:
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
    path = reference_path()
    out = json.loads(path.read_text()) if path.exists() and names else {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names or CASES:
            out[name] = run_case(name, Path(tmp))
            print(f"recorded {name}: {len(out[name]['rows'])} rows", flush=True)
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    import torch

    torch.set_num_threads(1)
    record(sys.argv[1:] or None)
