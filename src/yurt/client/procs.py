"""Process identity on Linux: a pid plus its start time names one process, even after reuse."""

from __future__ import annotations

import contextlib
import json
import os
import signal as _signal
import tempfile
from pathlib import Path
from typing import Any


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode(errors="replace")
    except OSError:
        return None
    rest = data[data.rindex(")") + 2:].split()
    # rest[0] is field 3 (state); field 22 is rest[19]
    if rest[0] in ("Z", "X"):
        return None  # a zombie has finished running
    return int(rest[19])


def is_alive(pid: int, started: int | None = None) -> bool:
    """True when ``pid`` runs (not a zombie) and, if given, started at ``started``."""
    if pid <= 0:
        return False
    st = start_time(pid)
    if st is None:
        return False
    return started is None or st == started


def signal_number(name: str | int | None, default: int = _signal.SIGINT) -> int:
    """"SIGTERM", "TERM", "15" or 15 -> 15; empty -> default."""
    if name is None or name == "":
        return default
    if isinstance(name, int):
        return name
    text = name.strip().upper()
    if text.isdigit():
        return int(text)
    if not text.startswith("SIG"):
        text = "SIG" + text
    try:
        return int(_signal.Signals[text])
    except KeyError:
        raise ValueError(f"unknown signal {name!r}: use a name like SIGTERM or SIGINT") from None


def kill_group(pgid: int, sig: int) -> bool:
    """Signal a process group; False when it no longer exists."""
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return False


def write_json_atomic(path: Path, data: Any) -> None:
    """Write `path` whole or not at all. Each write goes through a temporary file of its own, so
    two writers never rename each other's file away; the last rename wins."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_json(path: Path) -> Any | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


CLONE_NEWNET = 0x40000000


def join_netns(path: str) -> None:
    """Move the calling process into the network namespace at `path` (setns(2))."""
    import ctypes
    import ctypes.util

    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
    finally:
        os.close(fd)
