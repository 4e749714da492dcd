"""The compiled task supervisor (`supervise.c`): built once per source, cached, or unavailable.

A task's executor does its set-up in Python, then execv's this small C program, which
supervises the task from then on in ~1 MB of RSS instead of the 25-35 MB a Python executor
keeps (see docs/architecture.md, "Lean supervision"). The source ships in the package; the
agent compiles it with ``$CC`` (default ``cc``) into ``<data dir>/bin/yurt-supervise-<hash>``
the first time a task starts (``make`` builds it too), and a binary of the same source hash is
reused. Without a compiler the drivers run the Python executor for the whole task, and the
agent warns once, naming the fix.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shlex
import subprocess
import threading
from pathlib import Path

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("supervise.c")
COMPILE_TIMEOUT = 120.0
FIX = "install a C compiler (apt-get install gcc libc6-dev) or set CC to one"

_warned: set[str] = set()
_warn_lock = threading.Lock()


def default_dir() -> Path:
    """Where drivers made without a data dir keep the binary: the user's cache."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "yurt" / "bin"


def source_hash() -> str:
    return hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]


class Supervisor:
    """The compiled supervisor of one agent, in ``directory`` (None: never; the Python executor)."""

    def __init__(self, directory: str | os.PathLike[str] | None) -> None:
        self.directory = Path(directory) if directory is not None else None
        self._lock = threading.Lock()
        self._resolved = False
        self._binary: str | None = None
        self.error = "" if directory is not None else "disabled"

    def binary(self) -> str | None:
        """The supervisor's path, built on first use; None when it cannot be had."""
        if self._resolved:
            return self._binary
        with self._lock:
            if not self._resolved:
                self._binary = self._build()
                self._resolved = True
        return self._binary

    def _build(self) -> str | None:
        if self.directory is None:
            return None
        try:
            target = self.directory / f"yurt-supervise-{source_hash()}"
            if os.access(target, os.X_OK):
                return str(target)
            self.directory.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
            cc = shlex.split(os.environ.get("CC") or "cc")
            try:
                proc = subprocess.run([*cc, "-O2", "-o", str(tmp), str(SOURCE)], capture_output=True,
                                      text=True, timeout=COMPILE_TIMEOUT, check=False)
                if proc.returncode != 0:
                    raise OSError(f"{' '.join(cc)} exited with {proc.returncode}: "
                                  f"{(proc.stderr or proc.stdout).strip()[-300:]}")
                os.chmod(tmp, 0o755)
                os.replace(tmp, target)   # several agents or threads may build it at once
            finally:
                with contextlib.suppress(OSError):
                    tmp.unlink()
            return str(target)
        except (OSError, subprocess.SubprocessError) as e:
            self.error = str(e)
            _warn_once(self.error)
            return None


def _warn_once(error: str) -> None:
    with _warn_lock:
        if error in _warned:
            return
        _warned.add(error)
    log.warning("the compiled task supervisor is unavailable (%s): tasks are supervised by the Python "
                "executor instead (25-35 MB each); %s", error, FIX)


_default: Supervisor | None = None
_default_lock = threading.Lock()


def default_supervisor() -> Supervisor:
    """The one supervisor of drivers made without one: built into the user's cache."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Supervisor(default_dir())
        return _default
