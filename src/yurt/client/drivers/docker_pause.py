"""The pause container that holds a task group's network namespace when the group runs docker tasks.

Docker (and podman's Docker API) can only put a container into another container's network
namespace (``network_mode = "container:<id>"``), not into a namespace given by path. So, as
Nomad does, the namespace of a bridge-mode group with docker tasks is created by a tiny pause
container (``network_mode = "none"``), and bind-mounted at ``/var/run/netns/<alloc id>``: CNI,
the sidecar proxy (a host process), health checks and the firewall use that path exactly as
for an ``ip netns add`` namespace, and every container of the group joins the pause container.

The pause image (``yurt/pause:1``) is built locally when missing (no registry is needed): a
static binary that sleeps in ``pause()``, from ``gcc -static`` when gcc is there, else a
hand-assembled x86-64 ELF of a few dozen bytes.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import struct
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

IMAGE = "yurt/pause:1"
LABEL_ALLOC = "yurt.alloc_id"
LABEL_ROLE = "yurt.role"
LABEL_OWNER = "yurt.data_dir"
NETNS_DIR = Path("/var/run/netns")
START_TIMEOUT = 30.0

PAUSE_C = r"""
#include <signal.h>
#include <unistd.h>
static void quit(int s) { (void)s; _exit(0); }
int main(void) {
    signal(SIGTERM, quit); signal(SIGINT, quit); signal(SIGHUP, quit);
    for (;;) pause();
}
"""


class PauseError(Exception):
    pass


def _elf_x86_64() -> bytes:
    """A static x86-64 ELF: exit(0) on SIGTERM/SIGINT would need a handler, so it just loops in
    pause(); being PID 1 it ignores signals without a handler and is removed with SIGKILL."""
    code = bytes([0xB8, 0x22, 0x00, 0x00, 0x00,   # mov eax, 34 (pause)
                  0x0F, 0x05,                     # syscall
                  0xEB, 0xF7])                    # jmp back
    base, ehsize, phsize = 0x400000, 64, 56
    entry = base + ehsize + phsize
    ehdr = struct.pack("<4sBBBBB7xHHIQQQIHHHHHH", b"\x7fELF", 2, 1, 1, 0, 0, 2, 0x3E, 1, entry, ehsize, 0, 0,
                       ehsize, phsize, 1, 0, 0, 0)
    size = ehsize + phsize + len(code)
    phdr = struct.pack("<IIQQQQQQ", 1, 5, 0, base, base, size, size, 0x1000)
    return ehdr + phdr + code


def pause_binary() -> bytes:
    gcc = shutil.which("gcc")
    if gcc:
        with tempfile.TemporaryDirectory() as d:
            src, out = Path(d) / "pause.c", Path(d) / "pause"
            src.write_text(PAUSE_C)
            proc = subprocess.run([gcc, "-static", "-Os", "-s", "-o", str(out), str(src)], capture_output=True,
                                  text=True, timeout=120)
            if proc.returncode == 0:
                return out.read_bytes()
            log.info("gcc -static failed (%s); using the built-in pause binary", proc.stderr.strip()[-200:])
    if os.uname().machine not in ("x86_64", "amd64"):
        raise PauseError(f"cannot build the pause image on {os.uname().machine} without gcc: "
                         "apt-get install gcc libc6-dev")
    return _elf_x86_64()


def ensure_image(client: Any, force: bool = False) -> None:
    """Build ``yurt/pause:1`` on the engine unless it is there."""
    import docker
    if not force:
        try:
            client.images.get(IMAGE)
            return
        except docker.errors.ImageNotFound:
            pass
    binary = pause_binary()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data, mode in (("pause", binary, 0o755),
                                 ("Dockerfile", b'FROM scratch\nCOPY pause /pause\nENTRYPOINT ["/pause"]\n', 0o644)):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    try:
        client.images.build(fileobj=buf, custom_context=True, tag=IMAGE, rm=True, pull=False)
    except (docker.errors.BuildError, docker.errors.APIError) as e:
        raise PauseError(f"cannot build the pause image {IMAGE}: {e}") from None


def find(client: Any, alloc_id: str) -> list[Any]:
    return client.containers.list(all=True, filters={"label": [f"{LABEL_ALLOC}={alloc_id}", f"{LABEL_ROLE}=pause"]})


def create(client: Any, endpoint: str, alloc_id: str, *, hostname: str = "", owner: str = "",
           dns: dict[str, Any] | None = None) -> dict[str, Any]:
    """Start the pause container and bind-mount its namespace at /var/run/netns/<alloc id>.

    Returns the holder record kept in the network state (``release`` undoes it)."""
    import docker
    ensure_image(client)
    for old in find(client, alloc_id):  # a leftover from before a crash
        _remove(old)
    kwargs: dict[str, Any] = {}
    if dns and dns.get("Servers"):
        kwargs["dns"] = list(dns["Servers"])
        kwargs["dns_search"] = list(dns.get("Searches") or []) or None
        kwargs["dns_opt"] = list(dns.get("Options") or []) or None
    try:
        container = client.containers.run(
            IMAGE, name=f"yurt-pause-{alloc_id}", detach=True, network_mode="none",
            hostname=hostname or alloc_id[:8], labels={LABEL_ALLOC: alloc_id, LABEL_ROLE: "pause", LABEL_OWNER: owner},
            **{k: v for k, v in kwargs.items() if v})
    except docker.errors.APIError as e:
        raise PauseError(f"cannot start the pause container of allocation {alloc_id}: {_explain(e)}") from None
    holder = {"kind": "docker", "endpoint": endpoint, "container_id": container.id}
    try:
        pid = _wait_pid(container)
        bind_netns(pid, alloc_id)
    except Exception:
        _remove(container)
        raise
    return holder


def _explain(e: Exception) -> str:
    return str(getattr(e, "explanation", None) or e)


def _wait_pid(container: Any) -> int:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        container.reload()
        state = container.attrs.get("State") or {}
        if state.get("Running") and state.get("Pid"):
            return int(state["Pid"])
        if state.get("Status") in ("exited", "dead"):
            raise PauseError(f"the pause container exited at once: {state.get('Error') or state.get('ExitCode')}")
        time.sleep(0.05)
    raise PauseError(f"the pause container did not start within {START_TIMEOUT:.0f}s")


def bind_netns(pid: int, alloc_id: str) -> str:
    """/var/run/netns/<alloc id> becomes the namespace of ``pid`` (as ``ip netns attach`` does)."""
    NETNS_DIR.mkdir(parents=True, exist_ok=True)
    target = NETNS_DIR / alloc_id
    if not target.exists():
        target.touch(mode=0o444)
    proc = subprocess.run(["mount", "--bind", f"/proc/{pid}/ns/net", str(target)], capture_output=True,
                          text=True, timeout=30)
    if proc.returncode != 0:
        target.unlink(missing_ok=True)
        raise PauseError(f"cannot bind the pause container's network namespace at {target}: "
                         f"{proc.stderr.strip()}")
    return str(target)


def _client_for(holder: dict[str, Any]) -> Any:
    import docker
    return docker.DockerClient(base_url=holder.get("endpoint") or None, version="auto", timeout=60)


def alive(holder: dict[str, Any]) -> bool:
    try:
        client = _client_for(holder)
        c = client.containers.get(holder["container_id"])
        return bool((c.attrs.get("State") or {}).get("Running"))
    except Exception:  # noqa: BLE001 - anything but "running" means: make a new one
        return False


def _remove(container: Any) -> None:
    import docker
    try:
        container.remove(force=True, v=True)
    except docker.errors.NotFound:
        pass


def release(holder: dict[str, Any]) -> list[str]:
    """Remove the pause container (the namespace's bind mount is gone by now)."""
    import docker
    try:
        client = _client_for(holder)
        _remove(client.containers.get(holder["container_id"]))
    except docker.errors.NotFound:
        pass
    except Exception as e:  # noqa: BLE001 - teardown goes on; the error is reported
        return [f"removing pause container {holder.get('container_id', '')[:12]}: {_explain(e)}"]
    return []
