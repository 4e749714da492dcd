"""Workload identity: a JWT per allocation and task, signed by the server (Nomad 1.7+'s default
identity), and the node secrets that guard the client agents' own routes.

The token (RS256, Nomad's claims: nomad_namespace, nomad_job_id, nomad_allocation_id,
nomad_task, sub = region:ns:job:group:task:default, aud ["nomadproject.io"], iat = nbf, jti;
no exp, as Nomad's default identity) carries one Yurt claim, `yurt_services`: the names of the
allocation's group services (group- and task-level) and of their sidecars
(`<name>-sidecar-proxy`). A leaf certificate asked for with such a token is issued only for one
of those names. Anyone may check a token against `GET /.well-known/jwks.json`.

When: Nomad signs at plan-apply time and stores the tokens in the allocation. Yurt signs
lazily, when the client running the allocation asks for them (`PUT /v1/internal/alloc/<id>/
identity`, guarded by that node's SecretID): the tokens never sit in the allocation, so no one
who can read allocations can read them, the plan applier stays as it is, and a token is only
ever handed to the node the allocation is placed on. The claims depend only on the allocation
and its job version, so signing again (a restarted client) gives an equivalent token.

The signing key is an RSA key generated once, kept in `<server data dir>/workload-identity.pem`
(mode 0600, next to the state store); a store in memory gets a key in memory.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from yurt.errors import NotFound, PermissionDenied
from yurt.structs import Allocation, Job, Node
from yurt.structs.gateway import linked_services

AUDIENCE = "nomadproject.io"
ALGORITHM = "RS256"
KEY_FILE = "workload-identity.pem"
SERVICES_CLAIM = "yurt_services"
SIDECAR_SUFFIX = "-sidecar-proxy"


@dataclass
class WorkloadClaims:
    """What a valid workload identity says about its holder."""

    namespace: str
    job_id: str
    group: str
    alloc_id: str
    task: str
    services: list[str] = field(default_factory=list)


def looks_like_jwt(token: str) -> bool:
    """A JWT (three base64url parts, a JSON header) rather than an ACL secret (a UUID)."""
    return token.count(".") == 2 and token.startswith("eyJ")


def claims_from_payload(payload: dict[str, Any]) -> WorkloadClaims | None:
    sub = str(payload.get("sub", ""))
    parts = sub.split(":")
    services = payload.get(SERVICES_CLAIM) or []
    if len(parts) != 6 or not isinstance(services, list):
        return None
    return WorkloadClaims(namespace=str(payload.get("nomad_namespace", "")),
                          job_id=str(payload.get("nomad_job_id", "")), group=parts[3],
                          alloc_id=str(payload.get("nomad_allocation_id", "")),
                          task=str(payload.get("nomad_task", "")), services=[str(s) for s in services])


class JWKSVerifier:
    """Verifies workload identities against a JWKS document (a client-only agent's view of its
    server's keys, or the server's own)."""

    def __init__(self, jwks: dict[str, Any]) -> None:
        self._keys: dict[str, Any] = {}
        for k in jwks.get("keys") or []:
            try:
                self._keys[str(k.get("kid", ""))] = jwt.PyJWK.from_dict(k).key
            except (jwt.PyJWTError, ValueError, TypeError):
                continue

    def knows(self, token: str) -> bool:
        try:
            return str(jwt.get_unverified_header(token).get("kid", "")) in self._keys
        except jwt.PyJWTError:
            return False

    def verify(self, token: str) -> WorkloadClaims | None:
        """The token's claims when it is a workload identity signed by one of the keys; else None."""
        try:
            kid = str(jwt.get_unverified_header(token).get("kid", ""))
            key = self._keys.get(kid)
            if key is None:
                return None
            payload = jwt.decode(token, key, algorithms=[ALGORITHM], audience=AUDIENCE,
                                 options={"require": ["sub", "iat", "nbf", "jti"]})
        except jwt.PyJWTError:
            return None
        return claims_from_payload(payload)


class WorkloadIdentity:
    """The server's signer: `sign_alloc`, `verify`, `jwks`."""

    def __init__(self, key_dir: str | os.PathLike[str] | None, region: str = "global", *,
                 key_pem: bytes | None = None) -> None:
        """The signing key: `key_pem` (servers on etcd share one through the store), else the
        key file in `key_dir` (made on first use), else a key in memory only."""
        self.region = region
        if key_pem is not None:
            key = serialization.load_pem_private_key(key_pem, password=None)
            if not isinstance(key, rsa.RSAPrivateKey):
                raise ValueError("the shared workload identity key is not an RSA private key")
            self._key = key
        else:
            self._key = _load_or_create_key(Path(key_dir) / KEY_FILE if key_dir is not None else None)
        public = self._key.public_key()
        der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        self.key_id = hashlib.sha256(der).hexdigest()[:32]
        jwk = jwt.algorithms.RSAAlgorithm.to_jwk(public, as_dict=True)
        self._jwks = {"keys": [{**jwk, "kid": self.key_id, "alg": ALGORITHM, "use": "sig"}]}
        self._verifier = JWKSVerifier(self._jwks)

    def jwks(self) -> dict[str, Any]:
        """Nomad's `GET /.well-known/jwks.json` body."""
        return {"keys": [dict(k) for k in self._jwks["keys"]]}

    def verify(self, token: str) -> WorkloadClaims | None:
        return self._verifier.verify(token)

    def sign(self, alloc: Allocation, job: Job, task: str) -> str:
        now = int(time.time())
        ns = alloc.namespace or "default"
        claims = {
            "nomad_namespace": ns, "nomad_job_id": job.parent_id or job.id,
            "nomad_allocation_id": alloc.id, "nomad_task": task,
            "sub": f"{self.region}:{ns}:{job.id}:{alloc.task_group}:{task}:default",
            "aud": [AUDIENCE], "iat": now, "nbf": now, "jti": str(uuid.uuid4()),
            SERVICES_CLAIM: group_services(job, alloc.task_group),
        }
        return jwt.encode(claims, self._key, algorithm=ALGORITHM, headers={"kid": self.key_id, "typ": "JWT"})

    def sign_alloc(self, alloc: Allocation | None, node_id: str) -> dict[str, str]:
        """{task: token} for each task of `alloc`, which must be placed on node `node_id`."""
        if alloc is None:
            raise NotFound("allocation not found")
        if alloc.node_id != node_id:
            raise PermissionDenied(f"allocation {alloc.id} is not placed on node {node_id}: a node gets "
                                   "the identities of its own allocations only")
        job = alloc.job
        group = next((g for g in (job.task_groups if job else None) or [] if g.name == alloc.task_group), None)
        if job is None or group is None:
            raise NotFound(f"allocation {alloc.id} has no job or group {alloc.task_group!r} to sign for")
        return {t.name: self.sign(alloc, job, t.name) for t in group.tasks or []}


def group_services(job: Job, group_name: str) -> list[str]:
    """The group's service names (group- and task-level) and their sidecars' service names."""
    names: list[str] = []
    for g in job.task_groups or []:
        if g.name != group_name:
            continue
        services = list(g.services or [])
        for t in g.tasks or []:
            services.extend(t.services or [])
        for s in services:
            # a terminating gateway holds the identity of each external service it links
            linked = linked_services(s.connect.gateway) if s.connect is not None else []
            for name in (s.name, s.name + SIDECAR_SUFFIX if s.has_sidecar else "", *linked):
                if name and name not in names:
                    names.append(name)
    return names


def check_node_secret(node: Node | None, node_id: str, token: str, what: str) -> Node:
    """The node `node_id` when `token` is its SecretID; else PermissionDenied naming what is missing
    (never the secret itself)."""
    if node is None:
        raise NotFound(f"node {node_id} not found")
    if not token:
        raise PermissionDenied(f"{what} needs node {node_id}'s SecretID in the X-Nomad-Token header; none was given")
    if not node.secret_id or not _same(token, node.secret_id):
        raise PermissionDenied(f"{what} needs node {node_id}'s SecretID in the X-Nomad-Token header; "
                               "the token given is not it")
    return node


def check_registration(old: Node | None, node: Node, token: str) -> None:
    """A new node registers with its own SecretID; an existing one only with the one it has."""
    if old is None:
        if not node.secret_id:
            raise PermissionDenied(f"registering node {node.id} needs the node's SecretID (a UUID the node "
                                   "keeps) in its SecretID field; it is empty")
        if token and not _same(token, node.secret_id):
            raise PermissionDenied(f"registering node {node.id}: the X-Nomad-Token header is not the node's SecretID")
        return
    check_node_secret(old, node.id, token, f"re-registering node {node.id}")
    if node.secret_id and not _same(node.secret_id, old.secret_id):
        raise PermissionDenied(f"re-registering node {node.id}: the node's SecretID cannot change")


def _same(a: str, b: str) -> bool:
    import hmac
    return hmac.compare_digest(a.encode(), b.encode())


def new_key_pem() -> bytes:
    """A new signing key, as PEM (PKCS8)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _load_or_create_key(path: Path | None) -> rsa.RSAPrivateKey:
    if path is not None and path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError(f"{path} does not hold an RSA private key: remove it and a new one is made")
        return key
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if path is not None:
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        os.replace(tmp, path)
    return key
