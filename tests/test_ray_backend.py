"""fedtune's Ray backend (``fedtune/flower/ray_backend.py``) without starting Ray: the
arguments it gives ``ray.init``. Its effect on a real Ray (no ``setup_worker.py`` processes,
the monitor stopped, the actor module's imports) is checked in tests/test_ray_engine.py."""

import os

import pytest
import ray

from fedtune.flower.ray_backend import RayBackend


@pytest.fixture
def init_args(monkeypatch):
    """What ``RayBackend.init_ray`` passes to ``ray.init`` (Ray itself never starts)."""
    got = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: got.append(kwargs))
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)

    def init(**config):
        RayBackend({"init_args": config})  # its __init__ calls init_ray
        return got.pop()

    return init


def test_a_local_ray_gets_no_runtime_env_and_its_workers_inherit_the_path(init_args):
    args = init_args(logging_level="ERROR")
    assert args == {"include_dashboard": False, "logging_level": "ERROR"}
    assert os.environ["PYTHONPATH"].endswith(os.pathsep + "/elsewhere")


def test_a_cluster_elsewhere_gets_flowers_runtime_env(init_args, monkeypatch):
    args = init_args(address="ray://head:10001")
    assert args["runtime_env"] == {"env_vars": {"PYTHONPATH": os.environ["PYTHONPATH"]}}
    monkeypatch.setenv("RAY_ADDRESS", "head:6379")
    assert "runtime_env" in init_args()
