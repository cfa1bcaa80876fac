"""Materialize a finished FedKSeed run as a model: the base, brought to the saved version."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from transformers import AutoModelForCausalLM, AutoTokenizer

from fedtune.algorithms.fedkseed.server import STATE_FILE
from fedtune.seeded import zo_parameters
from fedtune.seeded.versions import VersionStore


def materialize(run_dir: Path):
    """(model, tokenizer) of the run's final global model, float32, on CPU."""
    run_dir = Path(run_dir)
    meta = json.loads((run_dir / "fedkseed.json").read_text())
    base = run_dir / "base-model" if (run_dir / "base-model").is_dir() else meta["base_model"]
    model = AutoModelForCausalLM.from_pretrained(base, dtype="float32").eval()
    tokenizer = AutoTokenizer.from_pretrained(base)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    state = np.load(run_dir / STATE_FILE)
    for p in model.parameters():
        p.requires_grad_(True)  # zo_parameters lists the tuned (trainable) tensors
    params = [p.data for p in zo_parameters(model)]
    VersionStore(params, state["seeds"], float(state["lr"])).load(state["accumulated"])
    return model, tokenizer
