#!/usr/bin/env python3
"""Build the countdash images and the pause image locally, without any registry.

``make images`` runs this against the engine at $DOCKER_HOST (podman's socket in this
project's Makefile; Docker Engine works the same). The images:

- ``yurt/python-base:3.11``: FROM scratch, the host's python3 interpreter, the shared libraries
  it and its extension modules link (found with ldd) and the standard library (no tests, no
  tkinter/idle, no site-packages): a small, reproducible rootfs for stdlib-only apps.
- ``hashicorpnomad/counter-api:v1``, ``hashicorpnomad/counter-dashboard:v1``: our own countdash
  apps (examples/countdash) on that base, with the originals' ports (9001, 9002), env
  contract (PORT, COUNTING_SERVICE_URL) and binding (all interfaces, BIND=0.0.0.0).
- ``yurt/pause:1``: the container that holds a group's network namespace (yurt.client.drivers.docker_pause).

Images already present are kept; ``--force`` rebuilds them.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import subprocess
import sys
import sysconfig
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import docker  # noqa: E402

from yurt.client.drivers import docker_pause  # noqa: E402

BASE = "yurt/python-base:3.11"
APPS = {
    "hashicorpnomad/counter-api:v1": ("counter_api.py", 9001),
    "hashicorpnomad/counter-dashboard:v1": ("dashboard.py", 9002),
}
SKIP_STDLIB = {"test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "pydoc_data",
               "site-packages", "dist-packages", "__pycache__", "distutils", "venv", "unittest",
               "config-3.11-x86_64-linux-gnu"}
SKIP_DYNLOAD = re.compile(r"^_(tkinter|test|ctypes_test|xxtestfuzz|testcapi|testbuffer|testinternalcapi|"
                          r"testimportmultiple|testmultiphase|testclinic)")


def ldd(path: str) -> set[str]:
    out = subprocess.run(["ldd", path], capture_output=True, text=True).stdout
    libs = set()
    for line in out.splitlines():
        m = re.search(r"(/\S+)", line.split("=>")[-1])
        if m:
            libs.add(m.group(1))
    return libs


def _add_file(tar: tarfile.TarFile, src: str, dest: str) -> None:
    info = tar.gettarinfo(os.path.realpath(src), arcname=dest)
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mtime = 0  # reproducible
    with open(os.path.realpath(src), "rb") as f:
        tar.addfile(info, f)


def _add_dir(tar: tarfile.TarFile, dest: str) -> None:
    info = tarfile.TarInfo(dest)
    info.type = tarfile.DIRTYPE
    info.mode = 0o1777 if dest.endswith("tmp") else 0o755
    tar.addfile(info)


def _add_bytes(tar: tarfile.TarFile, dest: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(dest)
    info.size = len(data)
    info.mode = mode
    tar.addfile(info, io.BytesIO(data))


def base_context() -> bytes:
    python = os.path.realpath(sys._base_executable if hasattr(sys, "_base_executable") else sys.executable)
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    dynload = stdlib / "lib-dynload"
    files: dict[str, str] = {}  # dest (in rootfs) -> host source
    files[f"rootfs/usr/bin/{version}"] = python
    libs = ldd(python)
    for so in sorted(dynload.glob("*.so")):
        if SKIP_DYNLOAD.match(so.name):
            continue
        files[f"rootfs{so}"] = str(so)
        libs |= ldd(str(so))
    for lib in sorted(libs):
        files[f"rootfs{lib}"] = lib
    for path in sorted(stdlib.rglob("*")):
        rel = path.relative_to(stdlib)
        if rel.parts[0] in SKIP_STDLIB or "__pycache__" in rel.parts or "test" in rel.parts[:-1] \
                or rel.parts[0] == "lib-dynload" or not path.is_file():
            continue
        files[f"rootfs{stdlib}/{rel}"] = str(path)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        dirs = sorted({str(Path(d).parent) for d in files} | {"rootfs/tmp", "rootfs/etc", "rootfs/app"})
        made: set[str] = set()
        for d in dirs:
            parts = Path(d).parts
            for i in range(1, len(parts) + 1):
                sub = "/".join(parts[:i])
                if sub not in made:
                    made.add(sub)
                    _add_dir(tar, sub)
        for dest, src in sorted(files.items()):
            _add_file(tar, src, dest)
        _add_bytes(tar, "rootfs/etc/passwd", b"root:x:0:0:root:/:/bin/false\nnobody:x:65534:65534::/:/bin/false\n")
        _add_bytes(tar, "rootfs/etc/group", b"root:x:0:\nnogroup:x:65534:\n")
        dockerfile = (f"FROM scratch\nCOPY rootfs/ /\nENV PATH=/usr/bin PYTHONDONTWRITEBYTECODE=1 "
                      f"PYTHONUNBUFFERED=1\nENTRYPOINT [\"/usr/bin/{version}\"]\n")
        _add_bytes(tar, "Dockerfile", dockerfile.encode())
    return buf.getvalue()


def app_context(script: str, port: int) -> bytes:
    src = ROOT / "examples" / "countdash" / script
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        _add_file(tar, str(src), f"app/{script}")
        dockerfile = (f"FROM {BASE}\nCOPY app/{script} /app/{script}\nENV PORT={port} BIND=0.0.0.0\n"
                      f"EXPOSE {port}\nSTOPSIGNAL SIGINT\n"
                      f"ENTRYPOINT [\"/usr/bin/{version}\", \"/app/{script}\"]\n")
        _add_bytes(tar, "Dockerfile", dockerfile.encode())
    return buf.getvalue()


def exists(client: docker.DockerClient, tag: str) -> bool:
    try:
        client.images.get(tag)
        return True
    except docker.errors.ImageNotFound:
        return False


def build(client: docker.DockerClient, tag: str, context: bytes) -> None:
    print(f"building {tag} ...", flush=True)
    try:
        client.images.build(fileobj=io.BytesIO(context), custom_context=True, tag=tag, rm=True, pull=False)
    except docker.errors.BuildError as e:
        log = "".join(str(x.get("stream", x.get("error", ""))) for x in e.build_log)
        sys.exit(f"building {tag} failed: {e}\n{log[-2000:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--force", action="store_true", help="rebuild images that exist")
    args = ap.parse_args()
    client = docker.DockerClient(base_url=os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock",
                                 version="auto", timeout=600)
    if args.force or not exists(client, BASE):
        build(client, BASE, base_context())
    for tag, (script, port) in APPS.items():
        if args.force or not exists(client, tag):
            build(client, tag, app_context(script, port))
    docker_pause.ensure_image(client, force=args.force)
    for tag in (BASE, *APPS, docker_pause.IMAGE):
        size = client.images.get(tag).attrs.get("Size", 0)
        print(f"{tag}: {size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
