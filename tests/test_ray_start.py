"""``fedtune simulate``'s early Ray start (fedtune/flower/ray_start.py), with a stand-in ``ray``
module (fast): the arguments and environment Ray starts with, Flower waiting for it, and an
actor's setup hook. The real engine runs in tests/test_simulation.py (slow)."""

from __future__ import annotations

import os
import sys
import threading
import types

import pytest

from fedtune.flower import ray_start


class FakeRay(types.ModuleType):
    """``ray.init`` records its arguments and the environment it would hand its processes."""

    def __init__(self) -> None:
        super().__init__("ray")
        self.calls: list[tuple[dict, dict]] = []
        self.up = False
        self.release = threading.Event()  # ray.init blocks until the test releases it

    def is_initialized(self) -> bool:
        return self.up

    def init(self, **kwargs) -> None:
        self.release.wait(10)
        self.calls.append((kwargs, dict(os.environ)))
        self.up = True


@pytest.fixture
def fake_ray(monkeypatch):
    ray = FakeRay()
    monkeypatch.setitem(sys.modules, "ray", ray)
    monkeypatch.setenv("PYTHONPATH", "/their/path")
    monkeypatch.setattr(ray_start, "_starting", None)
    yield ray
    ray.up = False  # the keeper thread ends with "its" Ray


def test_ray_starts_in_the_background_as_flower_would_less_the_runtime_env(fake_ray, tmp_path):
    ray_start.start({"logging_level": "ERROR", "log_to_driver": False}, str(tmp_path))
    waiter = threading.Thread(target=ray_start.wait)
    waiter.start()
    waiter.join(0.2)
    assert waiter.is_alive() and not fake_ray.calls  # wait() holds until ray.init returns
    fake_ray.release.set()
    waiter.join(10)
    assert not waiter.is_alive()
    ((kwargs, env),) = fake_ray.calls
    assert kwargs == {"include_dashboard": False, "logging_level": "ERROR",
                      "log_to_driver": False}  # no runtime_env: Ray's first workers serve
    path = env["PYTHONPATH"].split(os.pathsep)
    assert path[0] == str(tmp_path) and path[-1] == "/their/path"  # app folder, sys.path, theirs
    assert set(sys.path) - {""} <= set(path)
    assert env[ray_start.HOOK_ENV] == ray_start.HOOK == "fedtune.flower.ray_start.warm_actor"
    assert ray_start.HOOK_ENV not in os.environ  # only Ray's own processes inherit the hook


def test_an_initialised_ray_is_left_as_it_is(fake_ray, tmp_path):
    fake_ray.up = True
    fake_ray.release.set()
    ray_start.start({}, str(tmp_path))
    ray_start.wait()
    assert fake_ray.calls == []


def test_flowers_ray_backend_waits_for_the_early_start_patched_once(monkeypatch):
    from flwr.server.superlink.fleet.vce.backend import raybackend

    seen = []
    monkeypatch.setattr(raybackend.RayBackend, "init_ray", lambda self, cfg: seen.append(cfg))
    monkeypatch.setattr(ray_start, "wait", lambda: seen.append("waited"))
    ray_start.make_flower_wait()
    patched = raybackend.RayBackend.init_ray
    ray_start.make_flower_wait()
    assert raybackend.RayBackend.init_ray is patched  # not wrapped twice
    patched(object(), {"init_args": {}})
    assert seen == ["waited", {"init_args": {}}]


def test_an_actor_starts_its_imports_as_its_process_starts(monkeypatch):
    import builtins

    for name in ("peft", "torch", "fedtune.flower.client"):  # stand-ins: no 5 s of imports
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    imported, real_import = [], builtins.__import__

    def recording_import(name, *args, **kwargs):
        if threading.current_thread().name == "fedtune-actor-imports":
            imported.append(name if name != "fedtune.flower" else f"{name}.{args[2][0]}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", recording_import)
    monkeypatch.setattr(ray_start, "_warming", None)
    ray_start.warm_actor()
    first = ray_start._warming
    ray_start.warm_actor()
    assert first is not None and ray_start._warming is first  # one thread per process
    ray_start.warmed()
    assert not first.is_alive()
    assert imported == ["peft", "torch", "fedtune.flower.client"]
