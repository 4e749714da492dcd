"""StateStore operations on the keyed tables (`keyed.py`): reads from the read model, and one
write that builds its rows against the model with the write's index (a compare-and-set or a
lock is checked inside the write, so two writers never both win)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from pydantic import BaseModel

from .keyed import KEYED
from .memory import Tables
from .writes import Txn

_T = TypeVar("_T")


class KeyedStore:
    # provided by StateStore
    _mem_lock: threading.Lock
    _t: Tables
    if TYPE_CHECKING:
        def _write(self, build: Callable[[Txn], object]) -> int: ...

        def fixed(self, obj: _T, index: int) -> _T: ...

    def keyed_get(self, table: str, key: str) -> BaseModel | None:
        _known(table)
        return self._t.keyed.get(table, {}).get(key)

    def keyed_list(self, table: str, prefix: str = "") -> list[tuple[str, BaseModel]]:
        """The rows of `table` whose key starts with `prefix`, sorted by key."""
        _known(table)
        with self._mem_lock:
            rows = self._t.keyed.get(table, {})
            return sorted((k, r) for k, r in rows.items() if k.startswith(prefix))

    def keyed_write(self, build: Callable[[Txn], _T]) -> tuple[int, _T]:
        """One write: `build(txn)` reads through `txn.keyed`/`txn.keyed_items`, writes through
        `txn.put_keyed`/`txn.drop_keyed` (stamping `txn.index` where a row keeps its index)
        and returns what the caller gets back, its indexes as committed (`fixed`). A `build`
        that raises writes nothing."""
        out: list[_T] = []

        def run(txn: Txn) -> None:
            out.append(build(txn))
        index = self._write(run)
        return index, self.fixed(out[0], index)


def _known(table: str) -> None:
    if table not in KEYED:
        raise ValueError(f"unknown keyed table {table!r}; they are {', '.join(KEYED)}")
