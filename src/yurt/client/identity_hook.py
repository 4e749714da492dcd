"""The workload identity hook: each task's `secrets/nomad_token`, before any task starts.

The server signs the allocation's identities when this node asks for them (with its SecretID;
`server/identity.py` says why lazily); the hook writes one JWT per task, mode 0600, owned by
the agent's user (root) or by the task's `user` when it names one (the exec driver hands its
task's secrets to the user it runs as). Tokens already written for the job version the
allocation runs are kept (an agent restart re-runs prerun; the default identity never expires),
so a restarted agent needs no server. An in-place update to a new job version (its services may
have changed) gets new tokens, fetched off the caller's thread; a sidecar reads its file on
every request, so it presents the new one at once.
The connect-proxy sidecar reads its own file and presents it when it asks for its leaf
certificate: it gets a certificate only for its group's services.
"""

from __future__ import annotations

import logging
import os
import pwd
import threading
import time
from collections.abc import Callable
from pathlib import Path

from yurt.api.client import YurtClient
from yurt.errors import Unreachable
from yurt.structs import Task

from .alloc_hooks import AllocHook, AllocHookContext

log = logging.getLogger("yurt.client.identity")

TOKEN_FILE = "nomad_token"
ENV_TOKEN_FILE = ".nomad_token.env"   # in the task dir: the token for NOMAD_TOKEN (identity { env = true })
VERSION_FILE = "identity.version"   # in the allocation's root (no task sees it): the JobModifyIndex signed for
RETRY_FOR = 60.0   # seconds an unreachable server is retried before the allocation fails


class IdentityHook(AllocHook):
    name = "identity"

    def __init__(self, api: YurtClient, node_id: Callable[[], str], stop: threading.Event | None = None) -> None:
        self.api = api
        self.node_id = node_id
        self.stop = stop or threading.Event()   # set when the agent stops: retrying ends then

    def prerun(self, ctx: AllocHookContext) -> None:
        if ctx.ended or self._current(ctx):
            return
        if self._all_written(ctx):   # an older job version's: the tasks keep them until renewed
            self.update(ctx)
            return
        self._write(ctx, self._fetch(ctx.alloc_id, RETRY_FOR))

    def update(self, ctx: AllocHookContext) -> None:
        if ctx.ended or ctx.alloc.server_terminal() or self._current(ctx):
            return

        def refresh() -> None:
            try:
                self._write(ctx, self._fetch(ctx.alloc_id, 0.0))
            except Exception as e:  # noqa: BLE001 - the tasks keep their tokens; logged
                log.warning("allocation %s: renewing its workload identities failed: %s", ctx.alloc_id[:8], e)
        threading.Thread(target=refresh, name="yurt-identity", daemon=True).start()

    @staticmethod
    def _version(ctx: AllocHookContext) -> str:
        return str(ctx.alloc.job.job_modify_index if ctx.alloc.job is not None else 0)

    def _current(self, ctx: AllocHookContext) -> bool:
        """Every task has a token, signed for the job version the allocation runs."""
        try:
            signed = (ctx.alloc_dir.root / VERSION_FILE).read_text().strip()
        except OSError:
            signed = ""
        return signed == self._version(ctx) and self._all_written(ctx)

    @staticmethod
    def _all_written(ctx: AllocHookContext) -> bool:
        def written(t: Task) -> bool:
            d = ctx.task_dir(t.name)
            return d is None or ((not t.token_file or (d.secrets / TOKEN_FILE).exists())
                                 and (not t.token_env or (d.root / ENV_TOKEN_FILE).exists()))
        return all(written(t) for t in ctx.tasks)

    def _write(self, ctx: AllocHookContext, tokens: dict[str, str]) -> None:
        for task in ctx.tasks:
            task_dir = ctx.task_dir(task.name)
            token = tokens.get(task.name)
            if task_dir is None or not token:
                continue
            if task.token_file and task_dir.secrets.is_dir():
                write_token(task_dir.secrets / TOKEN_FILE, token, task.user)
            if task.token_env:
                write_token(task_dir.root / ENV_TOKEN_FILE, token)
        (ctx.alloc_dir.root / VERSION_FILE).write_text(self._version(ctx))

    def _fetch(self, alloc_id: str, retry_for: float) -> dict[str, str]:
        deadline = time.monotonic() + retry_for
        while True:
            try:
                return self.api.alloc_identity(alloc_id, self.node_id())
            except Unreachable as e:
                if time.monotonic() > deadline or self.stop.is_set():
                    raise
                log.warning("getting the workload identity of allocation %s: %s; retrying", alloc_id[:8], e)
                if self.stop.wait(1.0):
                    raise


def write_token(path: Path, token: str, user: str = "") -> None:
    """Write `token` to `path` (0600 from the start; owned by `user` when it names one here,
    else by the owner of the token it replaces: the exec driver gave that one to its task)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token)
    os.chmod(tmp, 0o600)
    try:
        old = path.stat()
        os.chown(tmp, old.st_uid, old.st_gid)
    except FileNotFoundError:
        pass
    if user:
        try:
            pw = pwd.getpwnam(user)
            os.chown(tmp, pw.pw_uid, pw.pw_gid)
        except KeyError:
            pass   # the driver refuses an unknown user when the task starts
    os.replace(tmp, path)
