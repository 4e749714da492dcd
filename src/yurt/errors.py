"""The one error hierarchy: every error a user (or a caller) can cause, as a value.

Each error carries a message that names the place and the fix, and the HTTP status the API
answers it with. The server, the store and the mesh raise these; the API maps every one to an
HTTP answer in one place (``yurt.api.errors``), in Nomad's shape or Consul's as the route is;
the HTTP clients (``yurt.api.client`` and the sidecar's own) turn an answer back into the same
class with ``error_for_status``, so the CLI catches what the server raised.

This module imports nothing, so every package may import it, the lean sidecar included.
"""

from __future__ import annotations


class YurtError(Exception):
    """An error with a message for a person and the HTTP status that carries it."""

    status: int = 500

    def __init__(self, message: str = "", *, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""

    def __str__(self) -> str:
        return self.message or f"{type(self).__name__} (HTTP {self.status})"


class InvalidInput(YurtError):
    """The request, file, flag or setting is wrong; the message says where and how to fix it."""

    status = 400


class PermissionDenied(YurtError):
    """The caller may not do this (a node secret that does not match, later ACLs)."""

    status = 403


class NotFound(YurtError):
    """A named object (job, allocation, node, intention, check...) does not exist."""

    status = 404


class Conflict(YurtError):
    """The request contradicts what is stored (an intention that exists, a stale index...)."""

    status = 409


class Unavailable(YurtError):
    """Nobody can answer right now: no server to forward to, or the store is closing."""

    status = 503


class Unreachable(Unavailable):
    """An HTTP client could not reach its agent at all (refused, timed out, reset)."""

    def __init__(self, address: str, reason: str) -> None:
        super().__init__(f"cannot reach the Yurt agent at {address}: {reason}")
        self.address = address


class ConfigError(InvalidInput):
    """An agent's or a sidecar's configuration (flags, config file) is wrong."""


_BY_STATUS: dict[int, type[YurtError]] = {
    400: InvalidInput, 403: PermissionDenied, 404: NotFound, 409: Conflict, 503: Unavailable}


def error_for_status(status: int, message: str) -> YurtError:
    """The error an HTTP answer stands for, as the server raised it (client side)."""
    cls = _BY_STATUS.get(status, YurtError)
    return cls(message, status=status)
