"""The Ray actor that runs ClientApp messages in ``fedtune simulate``.

Flower's own ``ClientAppActor`` does the same, but Ray finds an actor class by its module, and
Flower's lives in ``flwr.simulation``, whose package imports the SuperLink's state (SQLAlchemy,
Alembic, FastAPI): 0.8 CPU-s in every actor, for nothing it uses. This module imports only
what a message needs (docs/testing.md, "Start-up").
"""

from __future__ import annotations

from collections.abc import Callable

import ray
from flwr.app import Context, Message
from flwr.clientapp.client_app import ClientApp, ClientAppException, LoadClientAppError


@ray.remote
class ClientActor:
    """Runs one message at a time through the ClientApp, as Flower's ``ClientAppActor``."""

    def __init__(self, on_actor_init_fn: Callable[[], None] | None = None) -> None:
        if on_actor_init_fn:
            on_actor_init_fn()

    def run(self, client_app_fn: Callable[[], ClientApp], message: Message, cid: str,
            context: Context) -> tuple[str, Message, Context]:
        try:
            out = client_app_fn()(message=message, context=context)
        except LoadClientAppError:
            raise
        except Exception as ex:  # Flower's backend turns this into the reply's error
            raise ClientAppException(str(ex)) from ex
        return cid, out, context

    def terminate(self) -> None:
        ray.actor.exit_actor()
