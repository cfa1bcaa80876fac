"""Flower's Ray backend for ``fedtune simulate``, less three costs of its start and end
(about 2 s of the default run's 44; docs/testing.md, "Start-up"):

- Ray starts without Flower's runtime env (only ``PYTHONPATH``, which the workers inherit
  anyway), so each worker is one Python process, not two;
- its actors are :class:`~fedtune.flower.ray_actor.ClientActor`, whose module imports no
  ``flwr.simulation`` (0.8 CPU-s per actor);
- its teardown stops Ray's autoscaler monitor before ``ray.shutdown()``, which gives every
  process a second's grace after SIGTERM: the monitor's handler reports to the GCS, already
  stopped by then, and takes all of it.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator

import ray
from flwr.clientapp.client_app import ClientApp
from flwr.server.superlink.fleet.vce.backend import BackendConfig, raybackend
from flwr.simulation.ray_transport.ray_actor import BasicActorPool
from ray._private.ray_constants import PROCESS_TYPE_MONITOR

from fedtune.flower.ray_actor import ClientActor


class RayBackend(raybackend.RayBackend):
    """Flower's ``RayBackend`` with fedtune's actor class and a teardown without the wait."""

    def init_ray(self, backend_config: BackendConfig) -> None:
        """Flower's ``ray.init``, less its runtime env where Ray starts here: the workers
        inherit ``PYTHONPATH`` from the environment, and a runtime env makes Ray start each of
        them through a second Python process (``setup_worker.py``: 0.4 CPU-s and 0.4 s more
        per actor). A cluster elsewhere (``address``, ``RAY_ADDRESS``) inherits nothing from
        this process, so it gets Flower's runtime env."""
        if ray.is_initialized():
            return
        args = {"include_dashboard": False, **backend_config.get(self.init_args_key, {})}
        path = os.pathsep.join([*sys.path, *filter(None, [os.environ.get("PYTHONPATH")])])
        os.environ["PYTHONPATH"] = path  # Flower's reason: the app's folder is on sys.path
        if args.get("address") or os.environ.get("RAY_ADDRESS"):
            args["runtime_env"] = {"env_vars": {"PYTHONPATH": path}}
        ray.init(**args)

    def build(self, app_fn: Callable[[], ClientApp]) -> None:
        self.pool = BasicActorPool(actor_type=ClientActor, client_resources=self.client_resources,
                                   actor_kwargs=self.actor_kwargs)
        self.pool.add_actors_to_pool(self.pool.actors_capacity)
        self.app_fn = app_fn

    def terminate(self) -> None:
        if self.pool:
            self.pool.terminate_all_actors()
        stop_monitor()
        ray.shutdown()


def stop_monitor() -> bool:
    """Stop this driver's Ray autoscaler monitor (SIGKILL: a single-node cluster that is about
    to end has nothing for it to scale); whether there was one to stop."""
    node = getattr(ray._private.worker, "_global_node", None)  # Ray's own handle on its processes
    if node is None or PROCESS_TYPE_MONITOR not in getattr(node, "all_processes", {}):
        return False
    node.kill_monitor(check_alive=False)
    return True


@contextlib.contextmanager
def installed() -> Iterator[None]:
    """Flower's simulation engine builds its backend from ``raybackend.RayBackend``, looked up
    when the engine starts; within this block it finds fedtune's. It also turns off Ray's
    prestarted workers for this process, unless the caller set that: Ray starts a worker per
    core when the driver connects, in case tasks come, and the run's only workers are its
    actors, which Ray starts for them (docs/testing.md)."""
    os.environ.setdefault("RAY_prestart_worker_first_driver", "0")
    flower = raybackend.RayBackend
    raybackend.RayBackend = RayBackend
    try:
        yield
    finally:
        raybackend.RayBackend = flower
