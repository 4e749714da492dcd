"""The artifact hook: fetches a task's ``artifact`` blocks before it starts (before templates, as Nomad).

Each artifact is fetched once per task (a restart keeps what is on disk), with go-getter's
spellings: ``http(s)://`` (httpx; ``headers`` sent), ``file://`` and ``git::`` sources
(``github.com/...`` too; the ``git`` binary, ``ref`` and ``depth`` options). ``options``
are merged into the source's query as go-getter does: ``checksum`` (``sha256:<hex>``, ``md5:``,
``sha1:``, ``sha512:``) is verified on the fetched file before it is unpacked, ``archive = false``
keeps an archive as it is. Archives (.tar.gz/.tgz/.tar/.tar.bz2/.tar.xz/.zip, and a lone .gz)
are unpacked into ``destination`` (default ``local/``, relative to the task directory; never
outside the allocation directory); a member with an absolute path, a ``..``, or a link
pointing out is refused. ``mode = "file"`` writes the file at ``destination`` itself.

A ``file://`` source (or a ``file://`` git URL) outside the allocation directory is read only
for a raw_exec task without ``user``, which can read the node's files anyway (Nomad's
filesystem isolation of artifact downloads, which its client's ``disable_filesystem_isolation``
turns off); other tasks may read files inside their allocation directory only.

Transient failures (a connection error, a 5xx or 429 answer, git failing) are retried with
back-off (`ATTEMPTS` tries); then, or at once for the rest (a checksum mismatch, a 404, an
unsafe archive), the task gets a "Failed Artifact Download" event naming the artifact and
the error, and fails.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import logging
import lzma
import os
import posixpath
import pwd
import shutil
import stat
import subprocess
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from yurt.structs import Task, TaskArtifact
from yurt.structs.artifact import Source, parse_source

from . import task_events as ev
from .taskenv import interpolate
from .task_hooks import TaskHook, TaskHookContext, TaskHookError, TaskHookFactory

log = logging.getLogger("yurt.client.artifact")

ATTEMPTS = 4            # tries per artifact for transient failures
BACKOFF = 1.0           # seconds before the second try; doubled after each
HTTP_TIMEOUT = 30.0
GIT_TIMEOUT = 300.0



class ArtifactError(Exception):
    """An artifact cannot be fetched; ``transient``: worth another try."""

    def __init__(self, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


# --- fetching ------------------------------------------------------------------------------------


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def _target(path: Path, root: Path) -> Path:
    """A path about to be written under root: refused if a symlink already there leads it out."""
    if not _inside(path.parent, root) or (path.is_symlink() and not _inside(path, root)):
        raise ArtifactError(f'"{path.relative_to(root) if path.is_relative_to(root) else path}" leads outside '
                            'the destination through a symlink: refusing to write it')
    if path.is_symlink():
        path.unlink()
    return path


def _digest(path: Path, kind: str) -> str:
    h = hashlib.new(kind)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _http_get(url: str, headers: dict[str, str], out: Path) -> None:
    try:
        with httpx.stream("GET", url, headers=headers, timeout=HTTP_TIMEOUT, follow_redirects=True) as resp:
            if resp.status_code >= 400:
                raise ArtifactError(f"bad response code: {resp.status_code}",
                                    transient=resp.status_code >= 500 or resp.status_code == 429)
            with open(out, "wb") as f:
                for chunk in resp.iter_bytes():
                    f.write(chunk)
    except httpx.HTTPError as e:
        raise ArtifactError(f"{type(e).__name__}: {e}", transient=True) from e


def _safe_member(name: str, what: str) -> str:
    norm = posixpath.normpath(name)
    if name.startswith("/") or norm == ".." or norm.startswith("../") or "\0" in name:
        raise ArtifactError(f'archive member "{name}" {what}: refusing to unpack it')
    return norm


def _untar(archive: Path, dest: Path) -> None:
    try:
        with tarfile.open(archive) as tf:
            members = tf.getmembers()
            for m in members:
                _safe_member(m.name, "escapes the destination")
                if m.issym() or m.islnk():
                    target = m.linkname if m.issym() and not m.linkname.startswith("/") else None
                    if target is None and m.issym():
                        raise ArtifactError(f'archive member "{m.name}" links to an absolute path '
                                            f'"{m.linkname}": refusing to unpack it')
                    resolved = (posixpath.join(posixpath.dirname(m.name), m.linkname) if m.issym()
                                else m.linkname)
                    _safe_member(resolved, f'links outside the destination ("{m.linkname}")')
                elif not (m.isfile() or m.isdir()):
                    raise ArtifactError(f'archive member "{m.name}" is a device or fifo: refusing to unpack it')
            tf.extractall(dest, members=members, filter="data")
    except (tarfile.TarError, EOFError, OSError, zipfile.BadZipFile) as e:
        if isinstance(e, tarfile.FilterError):
            raise ArtifactError(f"unsafe archive: {e}") from e
        raise ArtifactError(f"cannot unpack {archive.name}: {e}") from e


def _unzip(archive: Path, dest: Path) -> None:
    try:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                _safe_member(info.filename, "escapes the destination")
                if stat.S_ISLNK(info.external_attr >> 16):
                    raise ArtifactError(f'archive member "{info.filename}" is a symlink: refusing to unpack it')
            for info in zf.infolist():
                _target(dest / posixpath.normpath(info.filename), dest)
            zf.extractall(dest)
            for info in zf.infolist():   # keep the modes zip recorded (executables)
                mode = (info.external_attr >> 16) & 0o777
                if mode and not info.is_dir():
                    os.chmod(dest / posixpath.normpath(info.filename), mode)
    except (zipfile.BadZipFile, OSError) as e:
        raise ArtifactError(f"cannot unpack {archive.name}: {e}") from e


_SINGLE: dict[str, Callable[..., Any]] = {"gz": gzip.open, "bz2": bz2.open, "xz": lzma.open}


def _unpack(kind: str, archive: Path, dest: Path, mode: str, name: str) -> None:
    """Unpack into dest (a directory; mode "file": dest is the file a single-file archive becomes)."""
    if kind in _SINGLE:
        out = dest if mode == "file" else dest / name.rsplit(".", 1)[0]
        out.parent.mkdir(parents=True, exist_ok=True)
        _target(out, out.parent if mode == "file" else dest)
        try:
            with _SINGLE[kind](archive, "rb") as src, open(out, "wb") as f:
                shutil.copyfileobj(src, f)
        except (OSError, EOFError, lzma.LZMAError) as e:
            raise ArtifactError(f"cannot decompress {name}: {e}") from e
        return
    if mode == "file":
        raise ArtifactError(f'{name} is an archive of many files and mode is "file": use mode "any" or "dir", '
                            'or archive = false to keep it as one file')
    dest.mkdir(parents=True, exist_ok=True)
    if kind == "zip":
        _unzip(archive, dest)
    else:
        _untar(archive, dest)


def _git(src: Source, dest: Path, work: Path) -> None:
    if shutil.which("git") is None:
        raise ArtifactError("the git binary is not installed on this node")
    clone = work / "repo"
    cmd = ["git", "clone", "--quiet"]
    ref, depth = src.git.get("ref", ""), src.git.get("depth", "")
    if depth:
        cmd += ["--depth", depth]
        if ref:
            cmd += ["--branch", ref]
    cmd += ["--", src.url, str(clone)]
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}
    steps = [cmd] + ([["git", "-C", str(clone), "checkout", "--quiet", ref]] if ref and not depth else [])
    for step in steps:
        try:
            p = subprocess.run(step, capture_output=True, text=True, timeout=GIT_TIMEOUT, env=env)
        except subprocess.TimeoutExpired as e:
            raise ArtifactError(f"git timed out after {GIT_TIMEOUT:.0f}s", transient=True) from e
        if p.returncode != 0:
            msg = (p.stderr or p.stdout).strip().splitlines()
            missing_ref = step[3:4] == ["checkout"] or "Remote branch" in (p.stderr or "")
            raise ArtifactError(f"git {step[1] if step[1] != '-C' else step[3]} failed: "
                                f"{msg[-1] if msg else p.returncode}", transient=not missing_ref)
    dest.mkdir(parents=True, exist_ok=True)
    for entry in clone.iterdir():
        target = dest / entry.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
        shutil.move(str(entry), str(target))


def fetch(a: TaskArtifact, task_root: Path, alloc_dir: Path, *, host_paths: bool) -> None:
    """Fetch one artifact into the task directory; ArtifactError says why not."""
    try:
        src = parse_source(a.getter_source, a.getter_options)
    except ValueError as e:
        raise ArtifactError(str(e)) from e
    mode = a.getter_mode or "any"
    dest = task_root / (a.relative_dest or "local/").lstrip("/")
    if not _inside(dest, alloc_dir):
        raise ArtifactError(f'destination "{a.relative_dest}" escapes the allocation directory')
    if src.getter in ("file", "git") and src.url.startswith("file:") and not host_paths:
        local = Path(urlsplit(src.url).path)
        if not _inside(local, alloc_dir):
            raise ArtifactError(f'file source "{local}" is outside the allocation directory: only a raw_exec task '
                                'without user may read the node\'s files')
    work_parent = task_root / "tmp"
    work_parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".artifact-", dir=work_parent) as tmp:
        work = Path(tmp)
        if src.getter == "git":
            _git(src, dest, work)
            return
        name = posixpath.basename(urlsplit(src.url).path.rstrip("/")) or "artifact"
        if src.getter == "file":
            path = Path(urlsplit(src.url).path)
            if path.is_dir():
                if mode == "file":
                    raise ArtifactError(f'"{path}" is a directory and mode is "file"')
                for d, _dirs, files in os.walk(path):
                    for f in files + _dirs:
                        _target(dest / Path(d).relative_to(path) / f, dest)
                shutil.copytree(path, dest, symlinks=True, dirs_exist_ok=True)
                return
            if not path.is_file():
                raise ArtifactError(f'"{path}" does not exist')
            got = work / "download"
            shutil.copyfile(path, got)
        else:
            got = work / "download"
            headers = dict(a.getter_headers or {})
            _http_get(src.url, headers, got)
        if src.checksum is not None:
            kind, want = src.checksum
            actual = _digest(got, kind)
            if actual != want:
                raise ArtifactError(f"checksums did not match: expected {kind}:{want}, got {kind}:{actual}")
        if src.archive:
            _unpack(src.archive, got, dest, mode, name)
            return
        out = dest if mode == "file" else dest / name
        out.parent.mkdir(parents=True, exist_ok=True)
        _target(out, out.parent if mode == "file" else dest)
        shutil.move(str(got), str(out))


def _chown(root: Path, user: str) -> None:
    if os.geteuid() != 0 or not user:
        return
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        return
    for d, dirs, files in os.walk(root):
        os.chown(d, pw.pw_uid, pw.pw_gid)
        for f in dirs + files:
            os.lchown(os.path.join(d, f), pw.pw_uid, pw.pw_gid)


class ArtifactHook(TaskHook):
    name = "artifacts"

    def __init__(self, task: Task) -> None:
        self.artifacts = list(task.artifacts or [])
        self._done: set[int] = set()

    def prestart(self, ctx: TaskHookContext) -> None:
        todo = [i for i in range(len(self.artifacts)) if i not in self._done]
        if not todo:
            return
        ctx.emit(ev.event(ev.DOWNLOADING_ARTIFACTS, "Client is downloading artifacts"))
        host_paths = ctx.task.driver == "raw_exec" and not ctx.task.user
        alloc_dir = ctx.task_dir.shared.parent
        env = ctx.task_env()
        for i in todo:
            a = self._interpolated(self.artifacts[i], env, ctx)
            delay = BACKOFF
            for attempt in range(1, ATTEMPTS + 1):
                try:
                    fetch(a, ctx.task_dir.root, alloc_dir, host_paths=host_paths)
                    break
                except ArtifactError as e:
                    err = e
                except OSError as e:
                    err = ArtifactError(f"{type(e).__name__}: {e}")
                if not err.transient or attempt == ATTEMPTS:
                    msg = f'failed to download artifact "{a.getter_source}": {err}'
                    if err.transient:
                        msg += f" (after {ATTEMPTS} attempts)"
                    ctx.emit(ev.event(ev.ARTIFACT_FAILED, msg, message=msg,
                                      details={"download_error": msg}, download_error=msg))
                    raise TaskHookError(msg)
                log.info("task %s: artifact %s: %s; retrying in %.0fs", ctx.task.name, a.getter_source, err, delay)
                if ctx.killed.wait(delay):
                    return
                delay *= 2
            if a.chown:
                _chown(ctx.task_dir.root / (a.relative_dest or "local/").lstrip("/"), ctx.task.user)
            self._done.add(i)


    @staticmethod
    def _interpolated(a: TaskArtifact, env: dict[str, str], ctx: TaskHookContext) -> TaskArtifact:
        """``${...}`` in source, options, headers and destination from the node and the task's environment."""
        def interp(value: object) -> object:
            return interpolate(value, env, ctx.node)
        return a.model_copy(update={"getter_source": interp(a.getter_source),
                                    "getter_options": interp(a.getter_options),
                                    "getter_headers": interp(a.getter_headers),
                                    "relative_dest": interp(a.relative_dest)})


def artifact_hooks() -> TaskHookFactory:
    """The factory the node agent gives its allocation runners: an `ArtifactHook` per task with artifacts."""
    def make(task: Task) -> TaskHook | None:
        return ArtifactHook(task) if task.artifacts else None
    return make
