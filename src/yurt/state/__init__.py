"""The server's store: SQLite (WAL) for durability, an in-memory model for reads, one index,
snapshots for the scheduler and blocking queries for the HTTP API."""

from .derive import JOB_DEAD, JOB_PENDING, JOB_RUNNING
from .errors import NotFound, StateError
from .memory import NODE_ALLOCS
from .store import StateStore
from .view import Snapshot, StateView

__all__ = ["JOB_DEAD", "JOB_PENDING", "JOB_RUNNING", "NODE_ALLOCS", "NotFound", "Snapshot", "StateError",
           "StateStore", "StateView"]
