"""Nomad's variables: small maps of secrets by namespace and path, encrypted at rest.

The store (table "variables", `structs.StoredVariable`) holds a variable's metadata in the clear
and its items as AES-256-GCM ciphertext: the JSON of the items, a fresh 96-bit nonce per write,
the namespace and path as associated data (a row copied to another path or namespace does not
decrypt), and the ID of the root key that encrypted it.

The root keys are kept outside the store, in a keystore directory: `<data dir>/server/keystore`
by default, `server { keystore_dir = "..." }` to choose one; each key is `<key id>.json` (mode
0600). The server that writes the first variable creates a key there. Several servers on etcd
must all be able to decrypt: give them one keystore directory they share (what `yurt lab`
does), or copy the key files to each server's keystore. A row whose key is not there gets an
error naming the key ID and the file it should be in. A store in memory keeps its key in memory.

Locks (Nomad 1.7's, `PUT /v1/var/<path>?lock-acquire|lock-renew|lock-release`): a variable may
hold one lock, `{"ID", "TTL", "LockDelay"}` in its row. Only the holder (the lock ID in the
body) may change or delete a locked variable, renew the lock or release it. The leader keeps
the timers: a lock not renewed within 2 x TTL is lost, and the variable stays locked for its
LockDelay more before the lock is removed. A new leader gives every lock 2 x TTL afresh.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from yurt.errors import Conflict, InvalidInput, NotFound, YurtError
from yurt.state import StateStore
from yurt.state.keyed import var_key
from yurt.structs import StoredVariable
from yurt.structs.duration import SECOND, format_duration, parse_duration

from .heartbeat import Heartbeats

log = logging.getLogger("yurt.server.variables")

TABLE = "variables"
MAX_SIZE = 65536          # bytes of keys and values together (Nomad's maxVariableSize)
MAX_PATH = 128
_PATH_RE = re.compile(r"^[a-zA-Z0-9\-_~/]{1,128}$")
ALGORITHM = "aes256-gcm"
LOCK_TTL = 15 * SECOND           # Nomad's defaults and bounds for a lock
LOCK_DELAY = 15 * SECOND
MIN_LOCK_TTL, MAX_LOCK_TTL = 10 * SECOND, 24 * 3600 * SECOND


class LockConflict(Conflict):
    """Nomad's 409 for a lock: the variable's namespace and path only (`current`)."""

    def __init__(self, message: str, current: dict[str, Any]) -> None:
        super().__init__(message)
        self.current = current


def parse_lock(lock: Any) -> tuple[int, int]:
    """A lock-acquire body's `Lock` ({"TTL", "LockDelay"}: Go durations, or nanoseconds) as
    (ttl, delay) in nanoseconds, Nomad's defaults for what is missing; a 400 naming the field."""
    if lock is None:
        lock = {}
    if not isinstance(lock, dict):
        raise InvalidInput('Lock must be an object: {"TTL": "15s", "LockDelay": "15s"}')
    unknown = sorted(set(lock) - {"ID", "TTL", "LockDelay"})
    if unknown:
        raise InvalidInput(f"Lock.{unknown[0]} is not a lock field; a lock takes TTL and LockDelay")
    out = []
    for name, default in (("TTL", LOCK_TTL), ("LockDelay", LOCK_DELAY)):
        raw = lock.get(name)
        try:
            value = default if raw in (None, "", 0) else (raw if isinstance(raw, int) else parse_duration(str(raw)))
        except ValueError as e:
            raise InvalidInput(f"Lock.{name}: {e}") from None
        if value < 0:
            raise InvalidInput("Lock delay and TTL must be positive")
        out.append(value)
    if not MIN_LOCK_TTL <= out[0] <= MAX_LOCK_TTL:
        raise InvalidInput(f"Lock.TTL {format_duration(out[0])}: TTL must be between 10 seconds and 24 hours")
    return out[0], out[1]


def lock_id_of(body: Any) -> str:
    """The lock ID a request body carries (`Lock.ID`), "" if none."""
    lock = body.get("Lock") if isinstance(body, dict) else None
    return str(lock.get("ID") or "") if isinstance(lock, dict) else ""


class KeyMissing(YurtError):
    """A variable's root key is not in this server's keystore."""

    status = 500


class CasConflict(Conflict):
    """A check-and-set failed: `current` is the variable as it is (Nomad's 409 body)."""

    def __init__(self, message: str, current: dict[str, Any]) -> None:
        super().__init__(message)
        self.current = current


# --- root keys -------------------------------------------------------------------------------

class Keyring:
    """The root keys, by ID, in `directory` (None: in memory). The newest key encrypts."""

    def __init__(self, directory: str | Path | None) -> None:
        self.directory = Path(directory) if directory is not None else None
        self._keys: dict[str, tuple[int, bytes]] = {}   # id -> (create time ns, key)
        self._lock = threading.Lock()

    def where(self, key_id: str) -> str:
        return str(self.directory / f"{key_id}.json") if self.directory is not None else "(memory)"

    def _load(self) -> None:
        if self.directory is None or not self.directory.is_dir():
            return
        for f in self.directory.glob("*.json"):
            kid = f.stem
            if kid in self._keys:
                continue
            try:
                doc = json.loads(f.read_text())
                key = base64.b64decode(doc["Key"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if len(key) == 32 and doc.get("KeyID", kid) == kid:
                self._keys[kid] = (int(doc.get("CreateTime", 0)), key)

    def active(self) -> tuple[str, bytes]:
        """The key new writes use: the newest in the keystore, created if there is none."""
        with self._lock:
            self._load()
            if not self._keys:
                self._create()
            kid = max(self._keys, key=lambda k: (self._keys[k][0], k))
            return kid, self._keys[kid][1]

    def key(self, key_id: str) -> bytes | None:
        with self._lock:
            if key_id not in self._keys:
                self._load()
            got = self._keys.get(key_id)
            return got[1] if got else None

    def _create(self) -> None:
        kid = str(uuid.uuid4())
        key = AESGCM.generate_key(bit_length=256)
        now = time.time_ns()
        if self.directory is not None:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            doc = {"KeyID": kid, "Algorithm": ALGORITHM, "CreateTime": now,
                   "Key": base64.b64encode(key).decode()}
            tmp = self.directory / f".{kid}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(doc, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.directory / f"{kid}.json")
        self._keys[kid] = (now, key)


# --- validation ------------------------------------------------------------------------------

def check_path(path: str) -> None:
    """Nomad's path rules (ValidatePath), each error naming the path and the rule."""
    if not path:
        raise InvalidInput("variable requires path")
    if len(path) > MAX_PATH:
        raise InvalidInput(f'invalid path "{path[:40]}...": a variable path is at most {MAX_PATH} characters '
                           f"(this one has {len(path)})")
    if ".." in path:
        raise InvalidInput(f'invalid path "{path}": ".." is not allowed in a variable path')
    if not _PATH_RE.match(path):
        bad = sorted({c for c in path if not re.match(r"[a-zA-Z0-9\-_~/]", c)})
        raise InvalidInput(f'invalid path "{path}": a variable path has only letters, digits and - _ ~ / '
                           f'(not {" ".join(repr(c) for c in bad)})')
    if path.startswith("/") or path.endswith("/"):
        raise InvalidInput(f'invalid path "{path}": a variable path cannot start or end with "/"')
    if "//" in path:
        raise InvalidInput(f'invalid path "{path}": a variable path cannot have an empty segment ("//")')
    parts = path.split("/")
    if parts[0] != "nomad":
        return
    if len(parts) == 1:
        raise InvalidInput('"nomad" is a reserved top-level directory path, but you may write variables to '
                           '"nomad/jobs", "nomad/job-templates", "nomad/sentinel", or below')
    if parts[1] in ("jobs", "sentinel"):
        return
    if parts[1] == "job-templates" and len(parts) == 3:
        return
    if parts[1] == "job-templates":
        raise InvalidInput('"nomad/job-templates" is a reserved directory path, but you may write variables at '
                           'the level below it, for example, "nomad/job-templates/template-name"')
    raise InvalidInput(f'invalid path "{path}": only paths at "nomad/jobs" or "nomad/job-templates" and below '
                       'are valid paths under the top-level "nomad" directory')


def check_items(path: str, items: Any) -> dict[str, str]:
    if not isinstance(items, dict) or not items:
        raise InvalidInput(f'variable "{path}": missing required Items object (give at least one key = value)')
    for k, v in items.items():
        if not isinstance(v, str):
            raise InvalidInput(f'variable "{path}": item "{k}" must be a string, not {type(v).__name__}')
        if not k:
            raise InvalidInput(f'variable "{path}": an item key cannot be empty')
    size = sum(len(k.encode()) + len(v.encode()) for k, v in items.items())
    if size > MAX_SIZE:
        raise InvalidInput(f'variable "{path}": variables are limited to 64KiB in total size (its keys and '
                           f"values have {size} bytes)")
    return dict(items)


def check_namespace(namespace: str) -> str:
    if namespace == "*":
        raise InvalidInput('can not target wildcard ("*") namespace: give the variable\'s namespace')
    return namespace or "default"


# --- the variables ---------------------------------------------------------------------------

def metadata(row: StoredVariable) -> dict[str, Any]:
    """The metadata Nomad answers in lists (VariableMetadata)."""
    out: dict[str, Any] = {"Namespace": row.namespace, "Path": row.path}
    if row.lock:
        out["Lock"] = row.lock
    out.update({"CreateIndex": row.create_index, "CreateTime": row.create_time,
                "ModifyIndex": row.modify_index, "ModifyTime": row.modify_time})
    return out


def _aad(namespace: str, path: str) -> bytes:
    return f"{namespace}\x00{path}".encode()


class Variables:
    """Reads and writes of variables, encrypting and decrypting with the `Keyring`."""

    def __init__(self, store: StateStore, keyring: Keyring) -> None:
        self.store = store
        self.keyring = keyring
        self._leading = False
        self._new_timers()

    # -- the leader's lock timers ---------------------------------------------------------------
    def _new_timers(self) -> None:
        """The leader's lock timers, by `_timer_key`: 2 x TTL, then LockDelay."""
        self.lock_ttls = Heartbeats(self._lock_lost, every=0.2, name="yurt-var-lock-ttls")
        self.lock_delays = Heartbeats(self._lock_delay_over, every=0.2, name="yurt-var-lock-delays")

    def lead(self) -> None:
        """Give every lock 2 x its TTL afresh (as Nomad's restoreLockTTLTimers)."""
        self._new_timers()
        self._leading = True
        for row in self.rows():
            if row.lock:
                self._arm(row)
        self.lock_ttls.start()
        self.lock_delays.start()

    def step_down(self) -> None:
        self._leading = False
        self.lock_ttls.stop()
        self.lock_delays.stop()

    @staticmethod
    def _timer_key(namespace: str, path: str, lock_id: str) -> str:
        return f"{namespace}\x00{path}\x00{lock_id}"

    def _timer(self, row: StoredVariable) -> str:
        return self._timer_key(row.namespace, row.path, str((row.lock or {}).get("ID", "")))

    def _arm(self, row: StoredVariable) -> None:
        if self._leading and row.lock:
            ttl = parse_duration(str(row.lock.get("TTL") or "15s"))
            self.lock_ttls.reset(self._timer(row), ttl=2 * ttl / SECOND)

    def _lock_lost(self, timer: str) -> None:
        """2 x TTL without a renew: the lock is lost, and stays for its LockDelay more."""
        ns, path, lock_id = timer.split("\x00")
        row = self.row(ns, path)
        if row is None or not row.lock or row.lock.get("ID") != lock_id:
            return
        delay = parse_duration(str(row.lock.get("LockDelay") or "0s"))
        log.info('the lock on variable "%s" (namespace %s) was not renewed in 2 x its TTL; it is removed in %s',
                 path, ns, format_duration(delay))
        self.lock_delays.reset(timer, ttl=delay / SECOND)

    def _lock_delay_over(self, timer: str) -> None:
        ns, path, lock_id = timer.split("\x00")
        try:
            self.release(ns, path, lock_id, expired=True)
        except (NotFound, Conflict):
            pass   # released or taken meanwhile
        except Exception:
            log.exception('removing the expired lock on variable "%s" failed', path)

    # -- reads ------------------------------------------------------------------------------
    def row(self, namespace: str, path: str) -> StoredVariable | None:
        row = self.store.keyed_get(TABLE, var_key(namespace, path))
        return row if isinstance(row, StoredVariable) else None

    def rows(self, namespace: str | None = None, prefix: str = "") -> list[StoredVariable]:
        """Metadata rows by namespace then path; every namespace for None or "*"."""
        key_prefix = "" if namespace in (None, "*") else f"{namespace}\x00"
        out = [r for _, r in self.store.keyed_list(TABLE, key_prefix) if isinstance(r, StoredVariable)]
        return [r for r in out if r.path.startswith(prefix)]

    def decrypt(self, row: StoredVariable) -> dict[str, str]:
        key = self.keyring.key(row.key_id)
        if key is None:
            raise KeyMissing(f'variable "{row.path}" in namespace "{row.namespace}" is encrypted with root key '
                             f"{row.key_id}, which this server does not have: it should be at "
                             f"{self.keyring.where(row.key_id)} (restore that file, or set server {{ keystore_dir }} "
                             "to the directory holding it)")
        try:
            plain = AESGCM(key).decrypt(base64.b64decode(row.nonce), base64.b64decode(row.ciphertext),
                                        _aad(row.namespace, row.path))
        except (InvalidTag, ValueError):
            raise KeyMissing(f'variable "{row.path}" in namespace "{row.namespace}" does not decrypt with root key '
                             f"{row.key_id} ({self.keyring.where(row.key_id)}): the key file or the stored row "
                             "was changed") from None
        items: dict[str, str] = json.loads(plain)
        return items

    def full(self, row: StoredVariable) -> dict[str, Any]:
        """The variable as Nomad answers it: metadata and Items."""
        return {**metadata(row), "Items": self.decrypt(row)}

    def get(self, namespace: str, path: str) -> dict[str, Any] | None:
        row = self.row(namespace, path)
        return self.full(row) if row is not None else None

    def items(self, namespace: str, path: str) -> dict[str, str] | None:
        row = self.row(namespace, path)
        return self.decrypt(row) if row is not None else None

    # -- writes -----------------------------------------------------------------------------
    def put(self, namespace: str, path: str, items: Any, cas: int | None = None,
            lock_id: str = "") -> tuple[int, dict[str, Any]]:
        """Set the variable (with `cas`: only if its ModifyIndex is that, 0: only if it does not
        exist; else CasConflict carrying the current variable). A locked one only with its lock's
        ID (`lock_id`), and it stays locked."""
        return self._set(namespace, path, items, cas=cas, lock_id=lock_id)

    def acquire(self, namespace: str, path: str, items: Any, lock: Any) -> tuple[int, dict[str, Any]]:
        """Nomad's lock-acquire: lock the variable (made if it does not exist; its items replaced
        when `items` are given), a new lock ID in the answer; LockConflict if it holds a lock."""
        ttl, delay = parse_lock(lock)
        new_lock = {"ID": str(uuid.uuid4()), "TTL": format_duration(ttl), "LockDelay": format_duration(delay)}
        return self._set(namespace, path, items, new_lock=new_lock)

    def _set(self, namespace: str, path: str, items: Any, *, cas: int | None = None, lock_id: str = "",
             new_lock: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
        namespace = check_namespace(namespace)
        check_path(path)
        keep_items = new_lock is not None and not items   # acquire without items: the variable's own
        items = {} if keep_items else check_items(path, items)
        kid, key = self.keyring.active()
        now = time.time_ns()
        k = var_key(namespace, path)

        def build(txn: Any) -> StoredVariable:
            if namespace != "default" and txn.keyed("namespaces", namespace) is None:   # checked in the write
                raise InvalidInput(f'variable "{path}" is in nonexistent namespace "{namespace}": create it first '
                                   f"(yurt namespace apply {namespace})")
            old = txn.keyed(TABLE, k)
            self._cas(namespace, path, old, cas)
            if old is not None and old.lock and (new_lock is not None or lock_id != old.lock.get("ID")):
                raise LockConflict(f'variable "{path}" in namespace "{namespace}" '
                                   + ("already holds a lock" if new_lock is not None else
                                      "is locked: only its lock's holder may change it (Lock.ID in the body)"),
                                   {"Namespace": namespace, "Path": path})
            plain = self.decrypt(old) if keep_items and old is not None else items
            nonce = os.urandom(12)
            sealed = AESGCM(key).encrypt(nonce, json.dumps(plain, sort_keys=True).encode(), _aad(namespace, path))
            row = StoredVariable(namespace=namespace, path=path, key_id=kid,
                                 nonce=base64.b64encode(nonce).decode(), ciphertext=base64.b64encode(sealed).decode(),
                                 lock=new_lock if new_lock is not None else (old.lock if old is not None else None),
                                 create_time=old.create_time if old else now, modify_time=now,
                                 create_index=old.create_index if old else txn.index, modify_index=txn.index)
            txn.put_keyed(TABLE, k, row)
            written["items"] = plain
            return row
        written: dict[str, dict[str, str]] = {}
        index, row = self.store.keyed_write(build)
        if new_lock is not None:
            self._arm(row)
        return index, {**metadata(row), "Items": written["items"]}

    def renew(self, namespace: str, path: str, lock_id: str) -> dict[str, Any]:
        """Nomad's lock-renew: the holder's lock lives 2 x TTL from now (the variable's metadata)."""
        row = self._locked(check_namespace(namespace), path, lock_id)
        if not self.lock_ttls.holds(self._timer(row)):   # lost, waiting out its delay
            raise LockConflict(f'variable "{path}": its lock was not renewed in time and is being released',
                               {"Namespace": row.namespace, "Path": path})
        self._arm(row)
        return metadata(row)

    def release(self, namespace: str, path: str, lock_id: str, *, expired: bool = False) -> tuple[int, dict[str, Any]]:
        """Nomad's lock-release: the holder's lock removed, the items kept (the metadata)."""
        namespace = check_namespace(namespace)
        k = var_key(namespace, path)

        def build(txn: Any) -> StoredVariable:
            old = txn.keyed(TABLE, k)
            self._check_lock(namespace, path, old, lock_id)
            row = old.model_copy(update={"lock": None, "modify_index": txn.index, "modify_time": time.time_ns()})
            txn.put_keyed(TABLE, k, row)
            return row
        index, row = self.store.keyed_write(build)
        timer = self._timer_key(namespace, path, lock_id)
        self.lock_ttls.forget(timer)
        self.lock_delays.forget(timer)
        if expired:
            log.info('the expired lock on variable "%s" (namespace %s) is removed', path, namespace)
        return index, metadata(row)

    def _locked(self, namespace: str, path: str, lock_id: str) -> StoredVariable:
        row = self.row(namespace, path)
        self._check_lock(namespace, path, row, lock_id)
        assert row is not None
        return row

    @staticmethod
    def _check_lock(namespace: str, path: str, row: StoredVariable | None, lock_id: str) -> None:
        if not lock_id:
            raise InvalidInput('missing lock information: give the lock\'s ID in the body, {"Lock": {"ID": "..."}}')
        if row is None:
            raise NotFound(f'variable "{path}" in namespace "{namespace}" doesn\'t exist')
        if not row.lock:
            raise LockConflict(f'variable "{path}" doesn\'t hold a lock', {"Namespace": namespace, "Path": path})
        if row.lock.get("ID") != lock_id:
            raise LockConflict(f'variable "{path}" is locked by another lock ID',
                               {"Namespace": namespace, "Path": path, "Lock": {}})

    def delete(self, namespace: str, path: str, cas: int | None = None, lock_id: str = "") -> int:
        namespace = check_namespace(namespace)
        k = var_key(namespace, path)

        def build(txn: Any) -> None:
            old = txn.keyed(TABLE, k)
            self._cas(namespace, path, old, cas)
            if old is not None and old.lock and lock_id != old.lock.get("ID"):
                raise LockConflict(f'variable "{path}" in namespace "{namespace}" is locked: only its lock\'s '
                                   "holder may delete it (Lock.ID in the body)", {"Namespace": namespace, "Path": path})
            if old is not None:
                txn.drop_keyed(TABLE, k)
        index, _ = self.store.keyed_write(build)
        return index

    def _cas(self, namespace: str, path: str, old: StoredVariable | None, cas: int | None) -> None:
        if cas is None:
            return
        if old is None and cas == 0:
            return
        if old is not None and old.modify_index == cas:
            return
        if old is None:
            current: dict[str, Any] = {"Namespace": namespace, "Path": path, "CreateIndex": 0, "CreateTime": 0,
                                       "ModifyIndex": 0, "ModifyTime": 0}
            raise CasConflict(f'cas error: variable "{path}" in namespace "{namespace}" does not exist '
                              f"(check index {cas})", current)
        try:
            current = self.full(old)
        except KeyMissing:
            current = metadata(old)
        what = "exists" if cas == 0 else f"has ModifyIndex {old.modify_index}"
        raise CasConflict(f'cas error: variable "{path}" in namespace "{namespace}" {what}, not check index '
                          f"{cas}", current)
