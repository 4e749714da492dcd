"""The HTTP API application: Nomad-shaped and Consul-shaped routes on one app, errors mapped
to HTTP in one place (`errors.install`)."""

from __future__ import annotations

from fastapi import FastAPI

from yurt import __version__

from . import (agent_routes, allocs, consul_catalog, consul_connect, consul_intentions, errors, internal,
               jobs, limits, logs)
from . import nodes


def create_app(agent) -> FastAPI:
    app = FastAPI(title="Yurt", version=__version__, docs_url="/ui/api", redoc_url=None)
    app.state.agent = agent
    for module in (jobs, allocs, logs, agent_routes, internal, consul_catalog, consul_connect,
                   consul_intentions):
        app.include_router(module.router)
    app.include_router(nodes.router)
    errors.install(app)
    app.add_middleware(limits.RequestLimits, max_request_bytes=agent.config.http_max_request_bytes)
    return app
