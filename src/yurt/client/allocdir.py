"""The allocation directory: ``<data_dir>/alloc/<alloc_id>/``.

Layout (Nomad's client/allocdir)::

    <alloc_id>/
      alloc/            shared by every task of the allocation (NOMAD_ALLOC_DIR)
        logs/           <task>.stdout.N / <task>.stderr.N
        tmp/
        data/
      <task>/
        local/          NOMAD_TASK_DIR, the task's working directory
        secrets/        NOMAD_SECRETS_DIR, mode 0700
        tmp/
"""

from __future__ import annotations

import base64
import os
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    from yurt.structs import Job, Task

SHARED_DIR = "alloc"
SHARED_SUBDIRS = ("logs", "tmp", "data")


@dataclass(frozen=True)
class TaskDir:
    """The directories of one task inside its allocation directory."""

    root: Path
    shared: Path  # the allocation's shared `alloc/` directory

    @property
    def local(self) -> Path:
        return self.root / "local"

    @property
    def secrets(self) -> Path:
        return self.root / "secrets"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    @property
    def logs(self) -> Path:
        return self.shared / "logs"

    def build(self) -> None:
        for d in (self.local, self.tmp):
            d.mkdir(parents=True, exist_ok=True)
            os.chmod(d, 0o777 if d == self.tmp else 0o755)
        self.secrets.mkdir(parents=True, exist_ok=True)
        os.chmod(self.secrets, 0o700)

    def write_payload(self, task: Task, job: Job | None) -> None:
        """A dispatched job's payload into local/<file> (Nomad's dispatch_payload { file })."""
        file = task.dispatch_payload.file if task.dispatch_payload else ""
        payload_b64 = job.payload if job else None
        if not file or payload_b64 is None:
            return
        target = (self.local / file).resolve()
        if not target.is_relative_to(self.local.resolve()):
            raise ValueError(f"dispatch_payload file {file!r} escapes the task's local/ directory")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(base64.b64decode(payload_b64))


class AllocDir:
    """Builds and destroys one allocation's directory tree."""

    def __init__(self, data_dir: str | os.PathLike, alloc_id: str) -> None:
        self.alloc_id = alloc_id
        self.root = Path(data_dir) / "alloc" / alloc_id

    @property
    def shared(self) -> Path:
        return self.root / SHARED_DIR

    @property
    def logs(self) -> Path:
        return self.shared / "logs"

    def task_dir(self, task: str) -> TaskDir:
        if not task or "/" in task or "\\" in task or task in (SHARED_DIR, ".", ".."):
            raise ValueError(f"invalid task name {task!r} for an allocation directory")
        return TaskDir(self.root / task, self.shared)

    def build(self, tasks: list[str]) -> None:
        """Create the tree (idempotent: an existing tree is kept as it is)."""
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        for sub in SHARED_SUBDIRS:
            d = self.shared / sub
            d.mkdir(parents=True, exist_ok=True)
            os.chmod(d, 0o777 if sub == "tmp" else 0o755)
        for task in tasks:
            self.task_dir(task).build()

    def exists(self) -> bool:
        return self.root.is_dir()

    def destroy(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def write_snapshot(alloc_dir: AllocDir, tasks: list[str], out: BinaryIO) -> None:
    """Nomad's alloc snapshot (ephemeral_disk migrate): a tar of the allocation's `alloc/data`
    and each task's `local/` (never secrets/ nor tmp/), names relative to the allocation's
    directory. Symbolic links are stored as links (the receiving side skips them)."""
    with tarfile.open(fileobj=out, mode="w|") as tar:
        sources = [(alloc_dir.shared / "data", f"{SHARED_DIR}/data")]
        for task in tasks:
            try:
                sources.append((alloc_dir.task_dir(task).local, f"{task}/local"))
            except ValueError:
                continue
        for path, name in sources:
            if path.is_dir() and not path.is_symlink():
                tar.add(path, arcname=name, recursive=True)


def _snapshot_target(name: str, tasks: list[str]) -> tuple[str, ...] | None:
    """The parts of a snapshot member's name when it may be unpacked: relative, no `..`, and
    under `alloc/data` or `<task>/local` of one of ``tasks``; None otherwise."""
    if not name or name.startswith("/") or "\\" in name:
        return None
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if len(parts) < 2 or ".." in parts:
        return None
    if parts[:2] == (SHARED_DIR, "data") or (parts[0] in tasks and parts[0] != SHARED_DIR and parts[1] == "local"):
        return parts
    return None


def restore_snapshot(alloc_dir: AllocDir, tasks: list[str], src: BinaryIO) -> int:
    """Unpack a snapshot (`write_snapshot`) into a freshly built allocation directory; only
    directories and regular files under `alloc/data` and the tasks' `local/` are written (links,
    devices, absolute names and `..` are skipped), nothing is followed out of the directory.
    Returns the number of files written."""
    root = alloc_dir.root.resolve()
    owner = os.geteuid() == 0
    written = 0
    with tarfile.open(fileobj=src, mode="r|") as tar:
        for member in tar:
            parts = _snapshot_target(member.name, tasks)
            if parts is None or not (member.isdir() or member.isfile()):
                continue
            target = root.joinpath(*parts)
            parent = target if member.isdir() else target.parent
            parent.mkdir(parents=True, exist_ok=True)
            if not parent.resolve().is_relative_to(root) or parent.resolve() != parent:
                raise ValueError(f"snapshot entry {member.name!r} leads out of the allocation directory")
            if member.isdir():
                os.chmod(target, member.mode & 0o7777)
            else:
                data = tar.extractfile(member)
                if data is None:
                    continue
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, member.mode & 0o7777)
                with os.fdopen(fd, "wb") as f:
                    shutil.copyfileobj(data, f)
                os.chmod(target, member.mode & 0o7777)
                written += 1
            if owner:
                os.lchown(target, member.uid, member.gid)
    return written
