"""ACL policies and tokens, in Nomad's JSON shapes (`/v1/acl/policy`, `/v1/acl/token`).

The store keeps a token's `SecretHash` (sha256 of its SecretID, hex) and never the SecretID
itself: the secret is shown once, in the answer to the create or bootstrap request.
"""

from __future__ import annotations

import hashlib
from typing import Any

from .base import Struct, field

TOKEN_CLIENT = "client"
TOKEN_MANAGEMENT = "management"


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class ACLPolicy(Struct):
    name: str = ""
    description: str = ""
    rules: str = ""
    create_index: int = 0
    modify_index: int = 0

    def stub(self) -> dict[str, Any]:
        return {"Name": self.name, "Description": self.description, "JobACL": None,
                "CreateIndex": self.create_index, "ModifyIndex": self.modify_index}


class ACLToken(Struct):
    accessor_id: str = field("", json="AccessorID")
    secret_id: str = field("", json="SecretID")      # only in the answer that creates it
    secret_hash: str = ""                             # what the store keeps
    name: str = ""
    type: str = TOKEN_CLIENT
    policies: list[str] = field(factory=list)
    global_: bool = field(False, json="Global")
    create_time: str = ""
    expiration_time: str | None = None
    expiration_ttl: str = field("", json="ExpirationTTL")
    expiration_ns: int = 0                             # ExpirationTime as ns since the epoch; 0: never
    create_index: int = 0
    modify_index: int = 0

    def public(self, *, secret: bool = False) -> dict[str, Any]:
        d = self.to_json()
        d.pop("SecretHash")
        d.pop("ExpirationNs")
        if not secret:
            d.pop("SecretID")
        d["Roles"] = []
        if d["ExpirationTime"] is None:
            d.pop("ExpirationTime")
        return d

    def stub(self) -> dict[str, Any]:
        return self.public()

    def expired(self, now_ns: int) -> bool:
        return bool(self.expiration_ns) and now_ns >= self.expiration_ns
