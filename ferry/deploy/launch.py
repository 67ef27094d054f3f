"""``ferry serve --ray``: deploy the Ferry application on Ray Serve and stay until SIGTERM/SIGINT.

The deployed thing is always a Serve config (``config_for(settings)`` or ``--ray-config FILE``),
submitted exactly as ``serve run FILE`` submits one, so the one-command path and the operator's
path (``serve run`` / ``serve deploy`` / KubeRay RayService with the same file) cannot drift.
Without ``--ray-address`` a local Ray instance is started for this process, sized small (no
dashboard, a small object store) and shut down on exit with everything it started.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import threading
import time
from typing import Any

import yaml

from ferry.settings import Settings

log = logging.getLogger(__name__)

OBJECT_STORE_BYTES = 100 * 1024 * 1024  # Ray's minimum is 75 MiB; Ferry passes only small data
READY_TIMEOUT_S = 600.0
# Ray and Serve settings for the processes this launcher starts (a local Ray instance inherits
# them; a cluster's `ray start` takes the same variables, README "Scale-out on Ray Serve"). An idle
# local instance spent 0.15 of a core (the controller's 0.1 s loop, 0.1 s metrics exports) and
# every streamed item crossed a thread hop on each side and Ray's task machinery, CPU taken from
# llama.cpp's cores (RESULTS.md "Ray Serve": CPU per token and tok/s with and without these).
# The environment's own values win.
RAY_ENV = {
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",  # replicas: user code on the main loop
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",  # handles: route on the caller's loop
    # handle calls straight to the replica over gRPC, not as Ray actor tasks: half the front
    # door's CPU per streamed item (a caller's choice: every Serve replica runs the gRPC server)
    "RAY_SERVE_USE_GRPC_BY_DEFAULT": "1",
    "RAY_SERVE_METRICS_EXPORT_INTERVAL_MS": "1000",
    "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5",  # controller: reconcile twice a second
    "RAY_enable_metrics_collection": "0",  # Ray's own Prometheus metrics (Ferry has /metrics)
}


def config_for(s: Settings) -> dict[str, Any]:
    """The Serve config file these settings deploy."""
    from ferry.deploy.app import (
        APP_NAME,
        ENGINE,
        FRONT,
        LAUNCH_FIELDS,
        engine_options,
        front_options,
    )

    args = s.model_dump(mode="json", exclude_unset=True, exclude=set(LAUNCH_FIELDS))
    args.setdefault("threads", s.threads)  # the launcher's machine decides, not each replica's
    return {
        "proxy_location": "Disabled",  # Ferry's front doors serve HTTP (see README)
        "applications": [{
            "name": APP_NAME, "route_prefix": None, "import_path": "ferry.deploy.app:build",
            "args": args,
            "deployments": [{"name": ENGINE, **engine_options(s)},
                            {"name": FRONT, **front_options(s)}],
        }],
    }


def _load_config(path: str):
    from ray.serve.schema import ServeDeploySchema

    with open(path) as f:
        return ServeDeploySchema.model_validate(yaml.safe_load(f))


def _cpus_needed(config) -> int:
    total = 0.0
    for app in config.applications:
        for d in app.deployments:
            opts = d.model_dump(exclude_unset=True)
            n = opts.get("num_replicas") if isinstance(opts.get("num_replicas"), int) else 1
            n = (opts.get("autoscaling_config") or {}).get("max_replicas", n)
            total += n * (opts.get("ray_actor_options") or {}).get("num_cpus", 1)
    return max(os.cpu_count() or 1, math.ceil(total))


def tune_ray_env() -> None:
    """``RAY_ENV`` into this process's environment, before Ray is imported (Serve reads its
    constants at import) or started (a local instance's processes inherit them)."""
    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)


def serve_ray(s: Settings) -> int:
    tune_ray_env()
    from ray.serve.schema import ServeDeploySchema

    if s.front_door_only:
        return front_door_only(s)
    config = (_load_config(s.ray_config) if s.ray_config
              else ServeDeploySchema.model_validate(config_for(s)))
    if s.print_ray_config:
        print(yaml.safe_dump(config_for(s), sort_keys=False))
        return 0
    import ray
    from ray.serve._private import api as serve_api
    from ray.serve.config import ProxyLocation

    stop = threading.Event()
    local = s.ray_address is None
    ray.init(address=s.ray_address, namespace="serve", include_dashboard=False,
             num_cpus=_cpus_needed(config) if local else None,  # None: ray.init's default
             object_store_memory=OBJECT_STORE_BYTES if local else None)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        client = serve_api.serve_start(proxy_location=ProxyLocation(config.proxy_location),
                                       http_options=config.http_options.model_dump())
        client.deploy_apps(config, _blocking=False)  # what `serve run FILE` does
        _wait_running(config, stop)
        log.info("Ferry on Ray Serve: front door on http://%s:%d (Ray cluster at %s)", s.host,
                 s.port, ray.get_runtime_context().gcs_address)
        stop.wait()
        return 0
    finally:
        from ray import serve

        serve.shutdown()
        ray.shutdown()


def _wait_running(config, stop: threading.Event) -> None:
    from ray import serve

    names = [a.name for a in config.applications]
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not stop.is_set():
        apps = serve.status().applications
        states = {n: apps[n].status if n in apps else "NOT_STARTED" for n in names}
        if all(st == "RUNNING" for st in states.values()):
            return
        failed = {n: apps[n].message for n, st in states.items() if st == "DEPLOY_FAILED"}
        if failed or time.monotonic() > deadline:
            print(f"ferry serve --ray: deployment failed: {failed or states}", file=sys.stderr)
            raise SystemExit(1)
        stop.wait(0.5)


def front_door_only(s: Settings) -> int:
    """One more front door for a running deployment, in this process (e.g. on a machine outside
    the Ray cluster's Serve replicas, or with another --ray-routing)."""
    import ray
    from ray import serve

    from ferry.deploy.app import APP_NAME, ENGINE
    from ferry.deploy.front import Engines, create_front_app
    from ferry.server import run

    ray.init(address=s.ray_address or "auto", namespace="serve")
    try:
        handle = serve.get_deployment_handle(ENGINE, app_name=APP_NAME)
        return run(create_front_app(s, Engines(handle)), s)
    finally:
        ray.shutdown()
