"""Smoke test of simulations/bench_sft.py: both frameworks train the same batches on `tiny`."""

from __future__ import annotations

import importlib.util
import math
import sys

import pytest
import torch

from tests.conftest import ROOT


def _bench_module():
    path = ROOT / "simulations" / "bench_sft.py"
    spec = importlib.util.spec_from_file_location("bench_sft", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_sft"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_bench_runs_both_frameworks_on_identical_work(capsys):
    pytest.importorskip("trl")
    threads = torch.get_num_threads()
    try:
        rows = _bench_module().main(["--model", "tiny", "--steps", "2", "--warmup-steps", "1",
                                     "--repeats", "1", "--batch-size", "4"])
    finally:
        torch.set_num_threads(threads)
    assert [r["model"] for r in rows] == ["tiny"]
    assert all(math.isfinite(rows[0][k]) and rows[0][k] > 0 for k in ("fedtune", "trl", "ratio"))
    out = capsys.readouterr().out
    assert "| model | trainable params | fedtune tok/s | TRL tok/s |" in out
