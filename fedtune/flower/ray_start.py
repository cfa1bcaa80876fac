"""Ray for ``fedtune simulate``, started early and without a runtime environment (issue #27).

Flower's simulation engine starts Ray once the ServerApp thread and the ClientApp are loading,
with ``runtime_env={"env_vars": {"PYTHONPATH": ...}}``. :func:`start` starts it instead, in a
background thread as soon as the engine is about to run, with the same arguments less the
runtime environment: the same ``PYTHONPATH`` reaches the workers through the environment they
inherit, so the workers Ray starts with the driver become the actors (with a runtime
environment Ray starts two more and discards them). Flower skips ``ray.init`` when Ray is
initialised; its ``RayBackend.init_ray`` waits for this thread first.

Each worker runs :func:`warm_actor` as it starts (Ray's worker process setup hook): it imports
torch, transformers, peft and the client code in a background thread, while the server loads
and evaluates round 0, instead of after the ``identify`` message. The ClientApp's handlers
wait for it (``client_app.app``). A deployed ClientApp never runs it.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

# ray_constants.WORKER_PROCESS_SETUP_HOOK_ENV_VAR: what runtime_env's worker_process_setup_hook
# sets; a worker that inherits it runs the named function as it starts
HOOK_ENV = "__RAY_WORKER_PROCESS_SETUP_HOOK_ENV_VAR"
HOOK = f"{__name__}.warm_actor"

_starting: threading.Event | None = None  # set once start's ray.init has returned
_warming: threading.Thread | None = None  # a worker's imports (see warm_actor)


def start(init_args: dict[str, Any], app_dir: str) -> None:
    """``ray.init(include_dashboard=False, **init_args)`` in a background thread, with the
    ``PYTHONPATH`` Flower would give the workers (``app_dir`` first, as its loader puts it);
    nothing when Ray is already initialised here."""
    global _starting
    path = [app_dir, *(p for p in sys.path if p != app_dir)]
    if os.environ.get("PYTHONPATH"):
        path.append(os.environ["PYTHONPATH"])
    os.environ["PYTHONPATH"] = os.pathsep.join(path)
    os.environ[HOOK_ENV] = HOOK

    started = threading.Event()

    def run() -> None:
        try:
            import ray

            if not ray.is_initialized():
                ray.init(include_dashboard=False, **init_args)
        except Exception:  # Flower's own ray.init tries again and reports it
            return
        finally:
            os.environ.pop(HOOK_ENV, None)  # only the Ray node processes inherit it
            started.set()
        # Ray's processes get SIGKILL when the *thread* that started them ends (Linux's
        # PR_SET_PDEATHSIG): this one lives as long as that Ray instance
        while ray.is_initialized():
            time.sleep(1.0)

    _starting = started
    threading.Thread(target=run, name="fedtune-ray-start", daemon=True).start()


def wait() -> None:
    """Until :func:`start`'s ``ray.init`` has returned (at once when none runs)."""
    if _starting is not None:
        _starting.wait()


def make_flower_wait() -> None:
    """Flower's ``RayBackend.init_ray`` waits for :func:`start` first (patched once; called
    before the engine starts, after :func:`start`, whose thread imports Ray meanwhile)."""
    from flwr.server.superlink.fleet.vce.backend import raybackend

    init: Callable[..., None] = raybackend.RayBackend.init_ray
    if getattr(init, "_fedtune_waits", False):
        return

    def init_ray(self: Any, backend_config: Any) -> None:
        wait()
        init(self, backend_config)

    init_ray._fedtune_waits = True  # type: ignore[attr-defined]
    raybackend.RayBackend.init_ray = init_ray  # type: ignore[method-assign]


def warm_actor() -> None:
    """Ray's setup hook in each worker: the client's imports in a background thread (never
    raises: a failing hook would end the worker; the message that needs them raises)."""
    global _warming
    if _warming is not None:
        return

    def work() -> None:
        try:
            import peft  # noqa: F401
            import torch  # noqa: F401

            from fedtune.flower import client  # noqa: F401
        except Exception:
            pass

    _warming = threading.Thread(target=work, name="fedtune-actor-imports", daemon=True)
    _warming.start()


def warmed() -> None:
    """Until :func:`warm_actor`'s imports are done (at once where it never ran)."""
    if _warming is not None:
        _warming.join()
