"""The workload identity hook: each task's `secrets/nomad_token`, before any task starts.

The server signs the allocation's identities when this node asks for them (with its SecretID;
`server/identity.py` says why lazily); the hook writes one JWT per task, mode 0600, owned by
the agent's user (root) or by the task's `user` when it names one (the exec driver hands its
task's secrets to the user it runs as). A token already written is kept (an agent restart
re-runs prerun; the default identity never expires), so a restarted agent needs no server.
The connect-proxy sidecar reads its own file and presents it when it asks for its leaf
certificate: it gets a certificate only for its group's services.
"""

from __future__ import annotations

import logging
import os
import pwd
import time
from collections.abc import Callable
from pathlib import Path

from yurt.api.client import YurtClient
from yurt.errors import Unreachable

from .alloc_hooks import AllocHook, AllocHookContext

log = logging.getLogger("yurt.client.identity")

TOKEN_FILE = "nomad_token"
RETRY_FOR = 60.0   # seconds an unreachable server is retried before the allocation fails


class IdentityHook(AllocHook):
    name = "identity"

    def __init__(self, api: YurtClient, node_id: Callable[[], str]) -> None:
        self.api = api
        self.node_id = node_id

    def prerun(self, ctx: AllocHookContext) -> None:
        missing = [t for t in ctx.tasks if (d := ctx.task_dir(t.name)) is not None
                   and not (d.secrets / TOKEN_FILE).exists()]
        if not missing or ctx.ended:
            return
        tokens = self._fetch(ctx.alloc_id)
        for task in missing:
            task_dir = ctx.task_dir(task.name)
            token = tokens.get(task.name)
            if task_dir is None or not token:
                continue
            write_token(task_dir.secrets / TOKEN_FILE, token, task.user)

    def _fetch(self, alloc_id: str) -> dict[str, str]:
        deadline = time.monotonic() + RETRY_FOR
        while True:
            try:
                return self.api.alloc_identity(alloc_id, self.node_id())
            except Unreachable as e:
                if time.monotonic() > deadline:
                    raise
                log.warning("getting the workload identity of allocation %s: %s; retrying", alloc_id[:8], e)
                time.sleep(1.0)


def write_token(path: Path, token: str, user: str = "") -> None:
    """Write `token` to `path` (0600 from the start; owned by `user` when it names one here)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token)
    os.chmod(tmp, 0o600)
    if user:
        try:
            pw = pwd.getpwnam(user)
            os.chown(tmp, pw.pw_uid, pw.pw_gid)
        except KeyError:
            pass   # the driver refuses an unknown user when the task starts
    os.replace(tmp, path)
