"""The HTTP API application: Nomad-shaped and Consul-shaped routes on one app, errors mapped
to HTTP in one place (`errors.install`)."""

from __future__ import annotations

import inspect
from typing import Any

from fastapi import Depends, FastAPI

from yurt import __version__

from . import (agent_routes, allocs, consul_catalog, consul_connect, consul_intentions, deployments, errors,
               internal, jobs, limits, logs)
from . import nodes
from . import metrics
from . import acl, authz
from . import mesh
from . import events, monitor
from . import ui
from . import client_allocs, client_exec, client_fs, search
from . import openapi
from . import consul_kv
from . import variables
from . import namespaces
from . import hot
from . import consul_config


class YurtAPI(FastAPI):
    """FastAPI, with the client agents' hot routes answered before its stack (api/hot.py)."""

    hot: hot.HotRoutes | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and self.hot is not None and await self.hot.take(scope, receive, send):
            return
        await super().__call__(scope, receive, send)

    def fast(self, exchange: hot.Exchange) -> bool:
        """Called by the HTTP protocol (agent/corked.py) with each request before it makes an
        ASGI cycle of it: True if the hot routes answered it (or parked it) themselves."""
        return self.hot is not None and self.hot.fast(exchange)


def _no_telemetry() -> dict[str, Any]:
    """FastAPI's own OpenTelemetry hooks off (Yurt's metrics are Prometheus'): asked on every
    request otherwise, reading the environment each time. Only where FastAPI has them."""
    if "telemetry" not in inspect.signature(FastAPI.__init__).parameters:
        return {}
    return {"telemetry": {"tracing": False, "metrics": False, "logs": False}}


def create_app(agent) -> FastAPI:
    # every route's ACL check (api/authz.py); with ACLs on, no unauthenticated API description
    acl_on = bool(getattr(getattr(agent, "config", None), "acl_enabled", False))
    app = YurtAPI(title="Yurt", version=__version__, docs_url=None if acl_on else "/ui/api", redoc_url=None,
                  openapi_url=None if acl_on else "/openapi.json", dependencies=[Depends(authz.authorize)],
                  **_no_telemetry())
    app.state.agent = agent
    for module in (jobs, deployments, allocs, logs, agent_routes, internal, consul_catalog, consul_connect,
                   consul_intentions):
        app.include_router(module.router)
    app.include_router(nodes.router)
    app.include_router(client_allocs.router)
    app.include_router(client_fs.router)
    app.router.routes.extend(client_exec.routes)   # websockets: a Starlette route, not in the OpenAPI doc
    app.include_router(search.router)
    app.include_router(metrics.router)
    app.include_router(acl.router)
    app.include_router(mesh.router)
    app.include_router(events.router)
    app.include_router(monitor.router)
    app.include_router(consul_kv.router)   # Consul's KV and sessions
    app.include_router(variables.router)
    app.include_router(namespaces.router)
    app.include_router(consul_config.router)   # Consul's config entries, the sidecars' chain
    app.include_router(ui.router)   # the web UI at /ui (after FastAPI's /ui/api page)
    errors.install(app)
    openapi.install(app)
    # the client agents' heartbeat and allocation watch, before the whole stack
    app.hot = hot.HotRoutes(app, agent.config.http_max_request_bytes)
    app.add_middleware(limits.RequestLimits, max_request_bytes=agent.config.http_max_request_bytes)
    app.add_middleware(jobs.JobIDPaths)   # a child job's ID, "<parent>/periodic-<unix>", escaped as %2F
    return app
