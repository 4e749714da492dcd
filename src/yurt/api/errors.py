"""Every error to an HTTP answer, in one place, for both API shapes.

Routes raise `yurt.errors` values (the server's, the store's, or their own for a bad request);
this maps each to its status with the message as a plain-text body. A Consul-shaped route (its
router is tagged "consul") also gets the X-Consul-* headers, which Consul's clients read on
errors too; a Nomad-shaped route gets Nomad's plain answer.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from yurt.errors import InvalidInput, YurtError

from .consul_common import headers, is_consul_route
from .forward import ToLeader, ToServer, to_leader, to_server


log = logging.getLogger("yurt.api")


def error_response(request: Request, status: int, message: str) -> Response:
    if is_consul_route(request):
        return PlainTextResponse(message, status_code=status, headers=headers(request))
    return PlainTextResponse(message, status_code=status)


def install(app: FastAPI) -> None:
    @app.exception_handler(ToServer)
    async def forward(request: Request, exc: ToServer) -> Response:
        return await to_server(request)

    @app.exception_handler(ToLeader)
    async def forward_to_leader(request: Request, exc: ToLeader) -> Response:
        return await to_leader(request)

    @app.exception_handler(YurtError)
    async def yurt_error(request: Request, exc: YurtError) -> Response:
        return error_response(request, exc.status, exc.message)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404 and exc.detail == "Not Found":
            # no route, so no shape to go by: the X-Consul-* headers too (Consul clients read
            # X-Consul-Index on every answer and take its absence for a protocol error)
            return PlainTextResponse(f"Invalid URL: {request.url.path} is not a Yurt API path", status_code=404,
                                     headers=headers(request))
        if exc.status_code == 405:
            return error_response(request, 405, f"Invalid method {request.method} for {request.url.path}")
        return error_response(request, exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> Response:
        """A bug: logged with its traceback (the agent's log is where it is looked for), answered
        500 as before."""
        log.error("%s %s failed: %s", request.method, request.url.path, exc, exc_info=exc)
        return PlainTextResponse("Internal Server Error", status_code=500)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> Response:
        err = InvalidInput(f"bad request: {exc.errors()[0].get('msg', 'invalid input')}")
        return error_response(request, err.status, err.message)
