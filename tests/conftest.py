"""Shared fixtures: a hermetic environment, Flower task identity, small configs, paths to
../shared."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# the quick tier's time budget (FEDTUNE_TEST_BUDGET): hooks, found here by their names
from tests.budget import (  # noqa: F401
    pytest_configure,
    pytest_runtest_call,
    pytest_runtest_makereport,
    pytest_runtest_setup,
)

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

# pytest-xdist runs one worker per core (pyproject's addopts): each worker's torch, and the
# processes its tests start (Ray actors, a SuperNode's ClientApps), get their share of the
# cores, not all of them: oversubscribed OpenMP threads spin, and a test then took 3x its time
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _WORKERS)))

# Variables of the caller's shell that change what the code under test does: Hugging Face
# (offline mode, endpoint, caches), Flower (home, telemetry), the visible GPUs and proxies
# (gRPC and HTTP clients route even localhost through them). Tests that need one set it.
ENV_PREFIXES = ("HF_", "FLWR_")
ENV_NAMES = frozenset({"CUDA_VISIBLE_DEVICES", "TRANSFORMERS_OFFLINE", "HUGGINGFACE_HUB_CACHE",
                       "http_proxy", "https_proxy", "all_proxy", "no_proxy", "grpc_proxy",
                       "ftp_proxy"})
# and offline: no test, and no process a test starts, reaches the Hugging Face hub (peft
# imports bitsandbytes, which on a CPU with AVX512-BF16 asks the hub for a kernel to download
# and run: a network call in every such process); a test of the online path unsets it
ENV_SET = {"FLWR_TELEMETRY_ENABLED": "0", "HF_HUB_OFFLINE": "1"}

# Hypothesis (tests/test_fuzz_*.py) runs derandomized, the same examples on every CI run, with
# few examples; HYPOTHESIS_PROFILE=long searches longer. Found cases stay as @example or tests.
settings.register_profile("ci", max_examples=40, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow,
                                                 HealthCheck.function_scoped_fixture])
settings.register_profile("long", max_examples=2000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow,
                                                 HealthCheck.function_scoped_fixture])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
STORIES = SHARED / "models" / "stories260k"


def pytest_collection_modifyitems(config, items):
    """Files that wait first, then the longest (see :func:`_longest_first`); tests marked
    ``gpu`` are skipped where CUDA is not available."""
    _longest_first(items)
    gpu = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not gpu:
        return
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs CUDA (marker gpu)")
        for item in gpu:
            item.add_marker(skip)


def _longest_first(items: list[pytest.Item]) -> None:
    """Order the files for xdist (``--no-loadscope-reorder`` in pyproject.toml: it hands each
    worker the next file in this order): the deployment files first (their tests mostly wait
    for Flower's processes, so their waits overlap the rest), then by the number of slow tests,
    then by the number of tests; each file's own order is kept. Otherwise xdist orders files by
    their number of tests, and the deployment modules, a few long tests each, ran last, alone."""
    def file(item: pytest.Item) -> str:
        return item.nodeid.split("::", 1)[0]

    waits, slow, count = Counter(), Counter(), Counter()
    for item in items:
        count[file(item)] += 1
        waits[file(item)] += bool(item.get_closest_marker("deployment")
                                  and item.get_closest_marker("slow"))
        slow[file(item)] += item.get_closest_marker("slow") is not None
    items.sort(key=lambda item: (-waits[file(item)], -slow[file(item)], -count[file(item)],
                                 file(item)))


def _caller_specific(name: str) -> bool:
    return name.startswith(ENV_PREFIXES) or name in ENV_NAMES or name.lower() in ENV_NAMES


@pytest.fixture(autouse=True)
def hermetic_env(monkeypatch):
    """Every test starts without the caller's HF_*, FLWR_*, CUDA_VISIBLE_DEVICES and proxy
    variables (Flower telemetry off, Hugging Face offline); a test that needs another value
    sets it with monkeypatch."""
    for name in [n for n in os.environ if _caller_specific(n)]:
        monkeypatch.delenv(name)
    for name, value in ENV_SET.items():
        monkeypatch.setenv(name, value)


@pytest.fixture(autouse=True)
def task_identity():
    """Flower Messages read the current task's identity; set one as a test process would."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
    yield


def small_config(**overrides):
    """A fast FedIT config on `tiny` for tests."""
    from fedtune.config import Config

    flat = {
        "local-steps": 4,
        "examples-per-client": 32,
        "eval-examples": 16,
        "client-eval-examples": 8,
        "max-new-tokens": 4,
        "num-server-rounds": 2,
        "lr": 2e-3,
        "lr-schedule": "constant",
        "min-train-nodes": 1,
        "min-available-nodes": 1,
    }
    flat.update(overrides)
    return Config.from_flat(flat)


def tiny_llama(tied: bool = False):
    """A 2-layer, hidden-32 Llama built from config (no download), in eval mode."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=tied)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture
def one_thread():
    """Tiny tensors gain nothing from threads, and OpenMP threads crawl on a busy 2-core box."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def stories_path() -> Path:
    if not (STORIES / "config.json").exists():
        pytest.skip("../shared/models/stories260k is not available")
    return STORIES


def run_loop(grid, cfg, on_round):
    """fedtune's round loop on ``grid`` (what the ServerApp runs, minus the run folder)."""
    from fedtune.algorithms import resolve
    from fedtune.flower.loop import run_rounds
    from fedtune.strategies import build_strategy

    algorithm = resolve(cfg)
    server = algorithm.server(cfg)
    return run_rounds(grid, cfg, server, build_strategy(cfg, algorithm.payload, server),
                      on_round, wait_for_nodes=1)
