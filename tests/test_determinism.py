"""GPU settings (issue #18, item 5): config ``deterministic`` turns on PyTorch's deterministic
CUDA kernels before any CUDA work and leaves CPU runs untouched (tests/test_behaviour.py keeps
their metrics bit for bit); a simulated client given no GPU sees none, as README says. Checked
without a GPU: CUDA is faked where it is asked for, Ray's own environment code is called
directly."""

from __future__ import annotations

import os

import pytest
import torch

from fedtune.config import Config
from fedtune.seeding import CUBLAS_WORKSPACE, deterministic_cuda


@pytest.fixture
def fake_cuda(monkeypatch):
    """CUDA 'present', and the calls to torch.use_deterministic_algorithms recorded."""
    calls: list[bool] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch, "use_deterministic_algorithms", calls.append)
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    return calls


def test_the_key_defaults_to_true_and_parses():
    assert Config().model.deterministic is True
    assert Config.from_flat({"deterministic": "false"}).model.deterministic is False
    assert Config().to_flat()["deterministic"] is True


@pytest.mark.parametrize("device", ["auto", "cuda", "cuda:1"])
def test_on_cuda_it_sets_the_cublas_workspace_and_deterministic_algorithms(fake_cuda, device):
    assert deterministic_cuda(True, device) is True
    assert fake_cuda == [True]
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == CUBLAS_WORKSPACE == ":4096:8"


def test_false_restores_the_default_and_a_callers_workspace_wins(fake_cuda, monkeypatch):
    assert deterministic_cuda(False, "auto") is False
    assert fake_cuda == [False] and "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    deterministic_cuda(True, "cuda")
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"


def test_a_cpu_device_is_left_alone_even_with_a_gpu_present(fake_cuda):
    assert deterministic_cuda(True, "cpu") is False
    assert fake_cuda == [] and "CUBLAS_WORKSPACE_CONFIG" not in os.environ


def test_on_this_cpu_machine_nothing_changes(monkeypatch):
    """No fakes: without CUDA the process's torch settings and environment stay as they were."""
    if torch.cuda.is_available():
        pytest.skip("a CUDA machine: the fakes above cover it")
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = torch.are_deterministic_algorithms_enabled()
    assert deterministic_cuda(True, "auto") is False
    assert torch.are_deterministic_algorithms_enabled() == before
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ


def test_the_server_and_every_client_apply_it_before_their_models(monkeypatch, tmp_path):
    """Through the real ServerApp and ClientApp on an in-process Grid: each process-level entry
    (the server's run, a client's train and evaluate) applies the run's value first."""
    from flwr.app import Context, RecordDict

    import fedtune.flower.client as client
    import fedtune.flower.server as server
    from client_app.app import app as client_app
    from server_app.app import main
    from tests.inprocess_grid import InProcessGrid

    seen: list[tuple[str, bool, str]] = []
    for module, who in ((server, "server"), (client, "client")):
        monkeypatch.setattr(module, "deterministic_cuda",
                            lambda on, device, who=who: seen.append((who, on, device)))
    flat = {"local-steps": 1, "examples-per-client": 8, "eval-examples": 4,
            "client-eval-examples": 2, "max-new-tokens": 1, "num-server-rounds": 1,
            "min-available-nodes": 2, "fraction-train": 1.0, "fraction-evaluate": 1.0,
            "batch-size": 2, "deterministic": False, "device": "cpu",
            "run-dir": str(tmp_path / "run")}
    main(InProcessGrid(client_app, 2, flat), Context(run_id=1, node_id=0, node_config={},
                                                     state=RecordDict(), run_config=flat))
    assert seen[0] == ("server", False, "cpu")
    assert seen.count(("client", False, "cpu")) == 4  # 2 train + 2 evaluate messages


def test_a_client_given_no_gpu_sees_none_in_its_ray_worker(monkeypatch):
    """README: "Ray hides GPUs from clients given none". Ray 2.55 does so only while
    RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO is true (its default, announced to flip); fedtune's
    apps and CLI had set it to 0, so a --client-gpus 0 client saw every GPU. This calls the
    code Ray runs in each worker (ray._private.utils.set_visible_accelerator_ids) with the
    environment fedtune sets and the GPU ids Ray assigned."""
    import ray
    import ray._private.utils as ray_utils

    from fedtune.logs import quiet_third_party

    monkeypatch.setenv("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "")  # restored after the test
    monkeypatch.delenv("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO")
    quiet_third_party()
    assert os.environ["RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO"] == "1"

    class Assigned:
        def __init__(self, gpus: list[str]) -> None:
            self.gpus = gpus

        def get_accelerator_ids(self) -> dict[str, list[str]]:
            return {"GPU": self.gpus}

    for gpus, visible in (([], ""), (["1"], "1"), (["0", "2"], "0,2")):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")  # the driver's: every GPU
        monkeypatch.setattr(ray, "get_runtime_context", lambda g=gpus: Assigned(g))
        ray_utils.set_visible_accelerator_ids()
        assert os.environ["CUDA_VISIBLE_DEVICES"] == visible, gpus
    monkeypatch.setenv("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # what fedtune had set
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    monkeypatch.setattr(ray, "get_runtime_context", lambda: Assigned([]))
    ray_utils.set_visible_accelerator_ids()
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0,1,2,3"  # the bug: all GPUs visible
