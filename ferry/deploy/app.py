"""The Ray Serve application: ``FrontDoor`` replicas (Ferry's own HTTP server) in front of
``EngineReplica`` replicas (one Ferry engine each), built by ``build(args)`` from Settings fields.

A Serve config file names it as ``import_path: ferry.deploy.app:build`` with ``args:`` the
settings (``ferry serve --ray --print-ray-config`` writes one); ``serve run``, ``serve deploy``
and a KubeRay RayService take that file unchanged, and ``ferry serve --ray`` deploys the very
same config. Deployment options (replicas, autoscaling, CPUs, router) come from the settings
here and may be overridden per deployment in the file's ``deployments:`` section, as Serve allows.

Why Ferry's HTTP server and not Ray's proxy: see README "Scale-out on Ray Serve" (measured).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ray import serve

from ferry.deploy.replica import EngineReplica
from ferry.settings import Settings

log = logging.getLogger(__name__)

APP_NAME = "ferry"
ENGINE = "EngineReplica"
FRONT = "FrontDoor"
FRONT_DOOR_CPUS = 0.1
# settings that say how to launch, not how to serve: never passed to the replicas
LAUNCH_FIELDS = frozenset({"ray", "ray_address", "ray_config", "print_ray_config",
                           "front_door_only"})


def engine_options(s: Settings) -> dict[str, Any]:
    """Serve deployment options of the engine replicas (also written into printed configs)."""
    opts: dict[str, Any] = {
        # above the engine's own capacity, so a full engine answers 429 as a single server does
        # (and a /health status call still gets through)
        "max_ongoing_requests": s.parallel + s.max_queue + 2,
        "ray_actor_options": {"num_cpus": s.replica_cpus},
        "health_check_period_s": 5,
        "graceful_shutdown_timeout_s": s.shutdown_timeout,
        "request_router_config": {
            "request_router_class": "ferry.deploy.router:FerryRequestRouter"},
    }
    if s.max_replicas > s.replicas:
        opts["autoscaling_config"] = {"min_replicas": s.replicas, "max_replicas": s.max_replicas,
                                      "initial_replicas": s.replicas,
                                      "target_ongoing_requests": s.parallel}
    else:
        opts["num_replicas"] = s.replicas
    return opts


def front_options(s: Settings) -> dict[str, Any]:
    return {"num_replicas": s.front_doors, "ray_actor_options": {"num_cpus": FRONT_DOOR_CPUS},
            "max_ongoing_requests": 1, "health_check_period_s": 5}


class FrontDoor:
    """Runs Ferry's uvicorn server (half-close protocol) on ``port + local rank`` of its node,
    on this replica's event loop; the app calls the engines through ``engines``."""

    # Serve awaits an async constructor; mypy wants __init__ to return None, not a coroutine
    async def __init__(self, settings: dict, engines: Any) -> None:  # type: ignore[misc]
        import uvicorn

        from ferry.deploy.front import Engines, create_front_app
        from ferry.server import uvicorn_config

        s = Settings(**settings)
        rank = serve.get_replica_context().rank
        s = s.model_copy(update={"port": s.port + (rank.local_rank if rank else 0)})
        self.server = uvicorn.Server(uvicorn_config(create_front_app(s, Engines(engines)), s))
        self.task = asyncio.create_task(self.server.serve())
        while not self.server.started:
            if self.task.done():
                self.task.result()  # raises (port taken, ...): Serve retries the replica
                raise RuntimeError("front door server exited at start-up")
            await asyncio.sleep(0.05)
        log.info("Ferry front door listening on http://%s:%d", s.host, s.port)

    async def check_health(self) -> None:
        if self.task.done():
            raise RuntimeError("front door server stopped")

    async def __del__(self) -> None:
        self.server.should_exit = True
        await asyncio.wait({self.task}, timeout=35)


def build(args: dict[str, Any]) -> serve.Application:
    """Serve application builder: ``args`` are Settings fields (as in a config file)."""
    s = Settings(**{k: v for k, v in args.items() if k not in LAUNCH_FIELDS})
    if not s.stream_store.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError("a Ray deployment needs a shared stream store: --stream-store redis://...")
    fields = s.model_dump(mode="json", exclude=set(LAUNCH_FIELDS))
    # serve.deployment(cls, ...) is annotated as returning the decorator; apply the decorator
    engine = serve.deployment(name=ENGINE, **engine_options(s))(EngineReplica)
    front = serve.deployment(name=FRONT, **front_options(s))(FrontDoor)
    return front.bind(fields, engine.bind(fields, APP_NAME))
