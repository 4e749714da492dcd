"""StateStore operations on the ACL tables: policies by name, tokens by AccessorID (stored with
the sha256 of their SecretID, never the SecretID), and the bootstrap index. Each is one write."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from yurt.structs import ACLPolicy, ACLToken

from .errors import NotFound, StateError
from .memory import Tables
from .writes import Txn


_T = TypeVar("_T")


class ACLStore:
    # provided by StateStore
    _mem_lock: threading.Lock
    _t: Tables
    if TYPE_CHECKING:
        def _write(self, build: Callable[[Txn], object]) -> int: ...

        def fixed(self, obj: _T, index: int) -> _T: ...

    # --- policies ------------------------------------------------------------------------------

    def upsert_acl_policy(self, policy: ACLPolicy) -> int:
        def build(txn: Txn) -> None:
            old = self._t.acl_policies.get(policy.name)
            txn.ch.acl_policies[policy.name] = policy.model_copy(update={
                "create_index": old.create_index if old else txn.index, "modify_index": txn.index})
        return self._write(build)

    def delete_acl_policy(self, name: str) -> int:
        if name not in self._t.acl_policies:
            raise NotFound("ACL policy not found")
        return self._write(lambda txn: txn.ch.acl_policies.__setitem__(name, None))

    def acl_policy(self, name: str) -> ACLPolicy | None:
        return self._t.acl_policies.get(name)

    def acl_policies(self) -> list[ACLPolicy]:
        with self._mem_lock:
            return sorted(self._t.acl_policies.values(), key=lambda p: p.name)

    # --- tokens --------------------------------------------------------------------------------

    def upsert_acl_token(self, token: ACLToken) -> ACLToken:
        """Store a token (its SecretID replaced by nothing: only `secret_hash` is kept)."""
        out: list[ACLToken] = []

        def build(txn: Txn) -> None:
            old = self._t.acl_tokens.get(token.accessor_id)
            new = token.model_copy(update={"secret_id": "",
                                           "create_index": old.create_index if old else txn.index,
                                           "modify_index": txn.index})
            txn.ch.acl_tokens[token.accessor_id] = new
            out.append(new)
        index = self._write(build)
        return self.fixed(out[0], index)

    def delete_acl_token(self, accessor: str) -> int:
        if accessor not in self._t.acl_tokens:
            raise NotFound("ACL token not found")
        return self._write(lambda txn: txn.ch.acl_tokens.__setitem__(accessor, None))

    def acl_token(self, accessor: str) -> ACLToken | None:
        return self._t.acl_tokens.get(accessor)

    def acl_token_by_hash(self, digest: str) -> ACLToken | None:
        with self._mem_lock:
            for tok in self._t.acl_tokens.values():
                if tok.secret_hash == digest:
                    return tok
        return None

    def acl_tokens(self) -> list[ACLToken]:
        with self._mem_lock:
            return sorted(self._t.acl_tokens.values(), key=lambda t: (t.create_index, t.accessor_id))

    # --- bootstrap -----------------------------------------------------------------------------

    def acl_bootstrap_index(self) -> int:
        """The index at which ACLs were bootstrapped; 0 if they were not."""
        return self._t.acl_bootstrap

    def acl_bootstrap(self, token: ACLToken, reset_index: int = 0) -> ACLToken:
        """Store the bootstrap token, once: raises StateError (naming the index to reset with) if
        ACLs were bootstrapped already and `reset_index` is not that index."""
        out: list[ACLToken] = []

        def build(txn: Txn) -> None:
            done = self._t.acl_bootstrap
            if done and reset_index != done:
                raise StateError(f"ACL bootstrap already done (reset index: {done})")
            new = token.model_copy(update={"secret_id": "", "create_index": txn.index,
                                           "modify_index": txn.index})
            txn.ch.acl_tokens[token.accessor_id] = new
            txn.ch.acl_bootstrap = txn.index
            out.append(new)
        index = self._write(build)
        return self.fixed(out[0], index)
