"""Errors the store raises. A failed write changes nothing and does not bump the index."""

from __future__ import annotations

from yurt.errors import Conflict, NotFound

__all__ = ["NotFound", "StateError"]


class StateError(Conflict):
    """A write that the store refuses because of what it holds; nothing was written."""
