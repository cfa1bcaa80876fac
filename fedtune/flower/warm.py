"""Ray started by fedtune for Flower's simulation engine, with workers that import the
ClientApp while the server evaluates round 0 (issue #27 item 4).

Flower's Ray backend starts Ray itself unless it is running already, and its actors import the
ClientApp's modules (flwr, torch, transformers, peft, the algorithm's client side) only when the
first message reaches them, after the server's round 0. :func:`start_ray` starts Ray as Flower
would (its ``ray.init`` arguments, ``PYTHONPATH`` = the driver's ``sys.path``) plus Ray's
``worker_process_setup_hook``, :func:`warm_worker`: each worker imports those modules as soon
as it starts. A worker's environment is the one Ray gives a CPU-only actor of
``client_cpus`` CPUs (``OMP_NUM_THREADS``, no visible GPU), set before torch is imported, so
the clients compute the same bits. Only for actors without GPUs: with GPUs, Flower starts Ray as
before.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import os
import sys
from typing import Any

MODULES_ENV = "FEDTUNE_WARM_MODULES"  # comma list, imported by each worker when it starts
CLIENT_MODULES = ("client_app.app", "fedtune.flower.client")


def warm_worker() -> None:
    """Ray's ``worker_process_setup_hook``: import the modules a ClientApp message needs. A
    module that fails to import is left to the message that needs it (which then fails as
    before), never to the worker's start."""
    for name in filter(None, os.environ.get(MODULES_ENV, "").split(",")):
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - the ClientApp reports it when a message needs it
            pass


def warm_modules(algorithm_client: Any) -> list[str]:
    """The ClientApp's modules and the algorithm's client module (``<package>.client`` of the
    package that defines ``algorithm_client``, when there is one)."""
    names = list(CLIENT_MODULES)
    package = getattr(algorithm_client, "__module__", "")
    if package.startswith("fedtune.algorithms."):
        candidate = f"{package}.client"
        try:
            if importlib.util.find_spec(candidate) is not None:
                names.append(candidate)
        except ImportError:
            pass
    return names


def worker_env(client_cpus: float) -> dict[str, str]:
    """What Ray sets in a CPU-only actor of ``client_cpus`` CPUs when it runs its first task,
    for a worker that imports torch before then: ``OMP_NUM_THREADS`` (unless set) and, as Ray
    hides GPUs from an actor given none, ``CUDA_VISIBLE_DEVICES=''``."""
    env = {}
    if "OMP_NUM_THREADS" not in os.environ:  # ray._private.utils.set_omp_num_threads_if_unset
        env["OMP_NUM_THREADS"] = str(max(math.floor(client_cpus), 1))
    override = os.environ.get("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "1").lower()
    if override in ("1", "true"):  # ray._private.utils.set_visible_accelerator_ids
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def start_ray(init_args: dict[str, Any], client_cpus: float, modules: list[str]) -> None:
    """``ray.init`` as Flower's Ray backend calls it, with warm workers."""
    import ray

    pythonpath = os.pathsep.join(sys.path)  # as flwr's RayBackend.init_ray
    if os.environ.get("PYTHONPATH"):
        pythonpath = f"{pythonpath}{os.pathsep}{os.environ['PYTHONPATH']}"
    os.environ["PYTHONPATH"] = pythonpath
    env = {"PYTHONPATH": pythonpath, MODULES_ENV: ",".join(modules), **worker_env(client_cpus)}
    ray.init(runtime_env={"env_vars": env,
                          "worker_process_setup_hook": f"{__name__}.warm_worker"},
             **{"include_dashboard": False, **init_args})


def stop_ray() -> None:
    """Shut Ray down if it still runs (Flower's backend shuts it down when it built one)."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
