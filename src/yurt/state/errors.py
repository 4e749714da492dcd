"""Errors the store raises. A failed write changes nothing and does not bump the index."""

from __future__ import annotations


class StateError(Exception):
    """A write that the store refuses; nothing was written."""


class NotFound(StateError, KeyError):
    """The object a write names does not exist (job, node, ...)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "not found"
