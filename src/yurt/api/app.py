"""The HTTP API application: Nomad-shaped routes (and later Consul-shaped ones) on one app."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from yurt import __version__

from . import (agent_routes, allocs, consul_catalog, consul_connect, consul_intentions, internal, jobs,
               logs)
from .common import error_response


def create_app(agent) -> FastAPI:
    app = FastAPI(title="Yurt", version=__version__, docs_url="/ui/api", redoc_url=None)
    app.state.agent = agent
    for module in (jobs, allocs, logs, agent_routes, internal, consul_catalog, consul_connect,
                   consul_intentions):
        app.include_router(module.router)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 404 and exc.detail == "Not Found":
            return error_response(404, f"Invalid URL: {request.url.path} is not a Yurt API path")
        if exc.status_code == 405:
            return error_response(405, f"Invalid method {request.method} for {request.url.path}")
        return error_response(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError):
        return error_response(400, f"bad request: {exc.errors()[0].get('msg', 'invalid input')}")

    return app
