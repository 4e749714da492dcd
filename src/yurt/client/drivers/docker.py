"""The `docker` driver: containers through the Docker Engine API (the `docker` SDK).

Works with Docker Engine and with podman's Docker-compatible service. The engine is found at
the endpoint given to the driver, else ``$DOCKER_HOST``, else ``unix:///var/run/docker.sock``;
when it does not answer, the driver is not detected and says why (so the scheduler reports
"missing driver docker").

A container is named ``<task>-<alloc id>`` and labelled ``yurt.alloc_id``, ``yurt.task`` and
``yurt.data_dir`` (which client owns it): `remove_orphans` deletes, at client start, the
containers of allocations the client no longer has (the driver declares ``removes_orphans``).
Logs go to ``alloc/logs/<task>.std*.N`` through a detached follower process
(`yurt.client.drivers.docker_logs`). The handle keeps the container ID, so an agent that
restarts re-attaches to running containers.

In a bridge-mode group the network namespace is held by a pause container
(`yurt.client.drivers.docker_pause`, created by the network hook through `netns_holder`: the
driver declares ``holds_network_namespace``); every container of the group joins it with
``network_mode = "container:<pause id>"``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from yurt.structs.driver_config import LIST, MAP, MOUNTS, SCHEMAS, block, config_problems

from ..procs import is_alive, read_json, signal_number, write_json_atomic
from . import docker_pause
from .base import (BaseDriver, Capabilities, DriverError, DriverFingerprint, ExitResult, TaskConfig, TaskHandle,
                   TaskStats, process_stats)

if TYPE_CHECKING:
    from docker import DockerClient

NAME = "docker"
DEFAULT_ENDPOINT = "unix:///var/run/docker.sock"
LABEL_ALLOC = docker_pause.LABEL_ALLOC
LABEL_TASK = "yurt.task"
LABEL_OWNER = docker_pause.LABEL_OWNER
LOGS_MODULE = "yurt.client.drivers.docker_logs"   # the follower, run as python -m
LOGS_SPEC = ".docker-logs-spec.json"
LOGS_PID = ".docker-logs-pid.json"
LOGS_LOG = ".docker-logs.log"
POLL = 0.1
KILL_GRACE = 10.0
MB = 1024 * 1024
_YURT_SRC = str(Path(__file__).resolve().parents[3])


def validate_config(config: dict[str, Any]) -> dict[str, Any]:
    """The task's ``config`` checked (structs.driver_config, as `job validate` does) and normalized."""
    problems = config_problems(NAME, config)
    if problems:
        raise DriverError(f"invalid docker config: {problems[0][1]}", recoverable=False)
    out: dict[str, Any] = {}
    for key, value in (config or {}).items():
        kind = SCHEMAS[NAME][key]
        if kind == MAP:
            value = block(value)
        elif kind == MOUNTS:
            value = [value] if isinstance(value, dict) else value
        elif kind == LIST:
            value = [str(v) for v in value]
        out[key] = value
    return out


def _explain(e: Exception) -> str:
    return str(getattr(e, "explanation", None) or e).strip()


class DockerDriver(BaseDriver):
    """The `docker` driver. ``endpoint``: the engine's address; ``owner``: the client's data dir."""

    name = NAME
    capabilities = Capabilities(fs_isolation="image", holds_network_namespace=True, removes_orphans=True)

    def __init__(self, endpoint: str = "", owner: str = "") -> None:
        self.endpoint = endpoint or os.environ.get("DOCKER_HOST") or DEFAULT_ENDPOINT
        self.owner = owner
        self._client = None
        self._lock = threading.Lock()
        self._followers: dict[int, subprocess.Popen] = {}

    # --- the engine -------------------------------------------------------------------------

    def client(self) -> DockerClient:
        import docker
        with self._lock:
            if self._client is None:
                try:
                    self._client = docker.DockerClient(base_url=self.endpoint, version="auto", timeout=120)
                except docker.errors.DockerException as e:
                    raise DriverError(f"Docker engine at {self.endpoint} is not reachable: {_explain(e)}") from None
            return self._client

    def fingerprint(self) -> DriverFingerprint:
        try:
            import docker
            client = docker.DockerClient(base_url=self.endpoint, version="auto", timeout=5)
            version = client.version()
            client.close()
        except Exception as e:  # noqa: BLE001 - every failure means "not usable", with its reason
            return DriverFingerprint(detected=False, healthy=False,
                                     description=f"Docker engine at {self.endpoint} is not reachable: {_explain(e)}")
        attrs = {"driver.docker": "1", "driver.docker.version": str(version.get("Version", "")),
                 "driver.docker.api_version": str(version.get("ApiVersion", ""))}
        components = [c.get("Name", "") for c in version.get("Components") or []]
        if any("podman" in c.lower() for c in components):
            attrs["driver.docker.engine"] = "podman"
        return DriverFingerprint(detected=True, healthy=True, description="Healthy", attributes=attrs)

    # --- the group's network namespace ---------------------------------------------------------

    def netns_holder(self, alloc_id: str, hostname: str = "", dns: dict[str, Any] | None = None) -> dict[str, Any]:
        """Create the pause container that holds ``alloc_id``'s namespace (network hook)."""
        try:
            return docker_pause.create(self.client(), self.endpoint, alloc_id, hostname=hostname,
                                       owner=self.owner, dns=dns)
        except docker_pause.PauseError as e:
            raise DriverError(str(e)) from None

    # --- start ------------------------------------------------------------------------------

    def start(self, cfg: TaskConfig) -> TaskHandle:
        import docker
        conf = validate_config(cfg.config)
        client = self.client()
        image = conf["image"]
        self._ensure_image(client, image, conf)
        name = f"{cfg.name}-{cfg.alloc_id}"
        try:  # a container left by a start that did not finish (agent crash)
            client.containers.get(name).remove(force=True, v=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as e:
            raise DriverError(f"failed to remove old container {name}: {_explain(e)}") from None
        kwargs = self._create_args(cfg, conf)
        try:
            container = client.containers.create(image, name=name, **kwargs)
        except docker.errors.APIError as e:
            raise DriverError(f"failed to create container: {_explain(e)}",
                              recoverable=e.status_code is None or e.status_code >= 500) from None
        try:
            container.start()
        except docker.errors.APIError as e:
            self._remove(container.id)
            raise DriverError(f"failed to start container {container.id[:12]}: {_explain(e)}") from None
        task_dir = Path(cfg.task_dir)
        handle = TaskHandle(driver=NAME, alloc_id=cfg.alloc_id, task=cfg.name, started_at=time.time_ns(),
                            task_dir=str(task_dir), state={"container_id": container.id, "image": image})
        if not cfg.logs_disabled:
            self._start_follower(handle, cfg.logs_dir, cfg.max_files,
                                 cfg.max_file_size_bytes or cfg.max_file_size_mb * MB, since=0)
        return handle

    def _ensure_image(self, client: DockerClient, image: str, conf: dict[str, Any]) -> None:
        import docker
        if not conf.get("force_pull"):
            try:
                client.images.get(image)
                return
            except docker.errors.ImageNotFound:
                pass
            except docker.errors.APIError as e:
                raise DriverError(f"failed to inspect image {image}: {_explain(e)}") from None
        repo, tag = image, None
        if "@" not in image and ":" in image.rsplit("/", 1)[-1]:
            repo, tag = image.rsplit(":", 1)
        auth = conf.get("auth") or None
        try:
            client.images.pull(repo, tag=tag or "latest", auth_config=auth)
        except docker.errors.APIError as e:
            err = e
            if auth and conf.get("auth_soft_fail"):
                try:
                    client.images.pull(repo, tag=tag or "latest")
                    return
                except docker.errors.APIError as e2:
                    err = e2
            raise DriverError(f"image {image} not found and cannot be pulled: {_explain(err)}") from None

    def _create_args(self, cfg: TaskConfig, conf: dict[str, Any]) -> dict[str, Any]:
        from docker.types import Mount
        labels = {str(k): str(v) for k, v in (conf.get("labels") or {}).items()}
        labels.update({LABEL_ALLOC: cfg.alloc_id, LABEL_TASK: cfg.name, LABEL_OWNER: self.owner})
        task_dir = Path(cfg.task_dir)
        mounts = [Mount("/alloc", str(cfg.alloc_dir), type="bind"),
                  Mount("/local", str(cfg.local_dir), type="bind"),
                  Mount("/secrets", str(task_dir / "secrets"), type="bind")]
        for host, dest, read_only in cfg.mounts:   # volume_mounts of host volumes
            mounts.append(Mount(dest, host, type="bind", read_only=read_only))
        for spec in conf.get("volumes", []):
            parts = spec.split(":")
            if len(parts) < 2:
                raise DriverError(f'invalid docker config: volume "{spec}" is not "source:target[:ro]"',
                                  recoverable=False)
            src = parts[0]
            if not src.startswith("/"):
                src = str(task_dir / src)
            mounts.append(Mount(parts[1], src, type="bind", read_only=len(parts) > 2 and "ro" in parts[2].split(",")))
        for m in conf.get("mount", []):
            kind = m.get("type", "volume")
            src = str(m.get("source", ""))
            if kind == "bind" and src and not src.startswith("/"):
                src = str(task_dir / src)
            mounts.append(Mount(str(m["target"]), src or None, type=kind, read_only=bool(m.get("readonly", False))))
        for d in (cfg.alloc_dir, cfg.local_dir, task_dir / "secrets"):
            Path(d).mkdir(parents=True, exist_ok=True)
        kwargs: dict[str, Any] = {
            "environment": self._environment(cfg.env), "labels": labels, "mounts": mounts, "detach": True,
            "privileged": bool(conf.get("privileged", False)),
        }
        if conf.get("entrypoint"):
            kwargs["entrypoint"] = conf["entrypoint"]
        command = ([conf["command"]] if conf.get("command") else []) + conf.get("args", [])
        if command:
            kwargs["command"] = command
        if conf.get("work_dir"):
            kwargs["working_dir"] = conf["work_dir"]
        if cfg.user:  # the task's `user`, as Nomad's docker driver sets the container's User
            kwargs["user"] = cfg.user
        if cfg.cpu_shares:
            kwargs["cpu_shares"] = max(2, int(cfg.cpu_shares))
        if cfg.memory_mb:
            if cfg.memory_max_mb and cfg.memory_max_mb > 0:
                kwargs["mem_limit"] = f"{cfg.memory_max_mb}m"
                kwargs["mem_reservation"] = f"{cfg.memory_mb}m"
            elif cfg.memory_max_mb == 0:
                kwargs["mem_limit"] = f"{cfg.memory_mb}m"
        network_mode = conf.get("network_mode", "")
        if not network_mode and cfg.netns:
            network_mode = f"container:{self._pause_id(cfg.alloc_id)}"
        if network_mode:
            kwargs["network_mode"] = network_mode
        if not network_mode.startswith("container:"):
            hostname = conf.get("hostname") or cfg.hostname
            if hostname:
                kwargs["hostname"] = hostname
            if conf.get("dns_servers"):
                kwargs["dns"] = conf["dns_servers"]
            if not cfg.netns:
                kwargs["ports"] = self._published(cfg, conf.get("ports", []))
        return kwargs

    @staticmethod
    def _environment(env: dict[str, str]) -> dict[str, str]:
        """The task's variables without the agent's own environment (the image brings its PATH)."""
        return {k: v for k, v in env.items() if k.startswith("NOMAD_") or os.environ.get(k) != v}

    @staticmethod
    def _published(cfg: TaskConfig, labels: list[str]) -> dict[str, Any]:
        """Host mode: publish each port label's container port (``to``, else the port) on its host port."""
        ports: dict[str, Any] = {}
        for label in labels:
            host = cfg.env.get(f"NOMAD_HOST_PORT_{label}")
            inner = cfg.env.get(f"NOMAD_PORT_{label}") or host
            if not host:
                raise DriverError(f'invalid docker config: port "{label}" is not a port label of the group',
                                  recoverable=False)
            ip = cfg.env.get(f"NOMAD_IP_{label}", "")
            for proto in ("tcp", "udp"):
                ports[f"{inner}/{proto}"] = (ip, int(host)) if ip else int(host)
        return ports

    def _pause_id(self, alloc_id: str) -> str:
        found = docker_pause.find(self.client(), alloc_id)
        running = [c for c in found if c.status == "running"]
        if not running:
            raise DriverError(f"the network namespace of allocation {alloc_id} is not held by a pause container "
                              "on this engine: the group's network was not set up for docker tasks")
        return running[0].id

    # --- logs -------------------------------------------------------------------------------

    def _start_follower(self, handle: TaskHandle, logs_dir: Path | str, max_files: int, max_size: int,
                        since: int) -> None:
        task_dir = Path(handle.task_dir)
        pid_file = task_dir / LOGS_PID
        pid_file.unlink(missing_ok=True)
        spec = {"endpoint": self.endpoint, "container_id": handle.state["container_id"], "task": handle.task,
                "logs_dir": str(logs_dir), "max_files": max_files, "max_file_size": max_size, "since": since,
                "pid_file": str(pid_file)}
        write_json_atomic(task_dir / LOGS_SPEC, spec)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_YURT_SRC, env.get("PYTHONPATH")) if p)
        with open(task_dir / LOGS_LOG, "ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", LOGS_MODULE, str(task_dir / LOGS_SPEC)],
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                                    close_fds=True, env=env, cwd=str(task_dir))
        with self._lock:
            self._followers[proc.pid] = proc
        handle.state["logs"] = {"pid": proc.pid, "dir": str(logs_dir), "max_files": max_files, "max_size": max_size}
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and proc.poll() is None:
            pids = read_json(pid_file)
            if pids:
                handle.state["logs"]["start"] = pids.get("start")
                return
            time.sleep(0.02)

    def _follower_alive(self, handle: TaskHandle) -> bool:
        logs = handle.state.get("logs") or {}
        self._reap()
        return bool(logs.get("pid")) and is_alive(int(logs["pid"]), logs.get("start"))

    def _stop_follower(self, handle: TaskHandle, grace: float = 3.0) -> None:
        """Let the follower drain what the container wrote, then make sure it is gone."""
        logs = handle.state.get("logs") or {}
        pid = int(logs.get("pid") or 0)
        deadline = time.monotonic() + grace
        while pid and time.monotonic() < deadline and self._follower_alive(handle):
            time.sleep(0.05)
        if pid and self._follower_alive(handle):
            try:
                os.kill(pid, 15)
            except ProcessLookupError:
                pass
        self._reap(wait=pid)

    def _reap(self, wait: int = 0) -> None:
        with self._lock:
            followers = dict(self._followers)
        for pid, proc in followers.items():
            try:
                done = proc.wait(2) is not None if pid == wait else proc.poll() is not None
            except subprocess.TimeoutExpired:
                done = False
            if done:
                with self._lock:
                    self._followers.pop(pid, None)

    # --- follow -----------------------------------------------------------------------------

    def _inspect(self, handle: TaskHandle) -> dict[str, Any] | None:
        """The container's State; None when the container is gone."""
        import docker
        try:
            return self.client().api.inspect_container(handle.state["container_id"]).get("State") or {}
        except docker.errors.NotFound:
            return None
        except docker.errors.APIError as e:
            raise DriverError(f"inspecting container {handle.state['container_id'][:12]}: {_explain(e)}") from None

    @staticmethod
    def _running(state: dict[str, Any]) -> bool:
        return bool(state.get("Running")) or state.get("Status") in ("created", "running", "paused", "restarting")

    def _result(self, handle: TaskHandle) -> ExitResult | None:
        try:
            state = self._inspect(handle)
        except DriverError:
            return None  # the engine hiccups: ask again on the next poll
        if state is None:
            return ExitResult(exit_code=-1, err=f"container {handle.state['container_id'][:12]} is gone")
        if self._running(state):
            return None
        return ExitResult(exit_code=int(state.get("ExitCode") or 0), oom_killed=bool(state.get("OOMKilled")),
                          err=str(state.get("Error") or ""))

    def wait(self, handle: TaskHandle, timeout: float | None = None) -> ExitResult | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            result = self._result(handle)
            if result is not None:
                return result
            if deadline is not None and time.monotonic() >= deadline:
                return None
            time.sleep(POLL)

    def recover(self, handle: TaskHandle) -> None:
        cid = handle.state.get("container_id", "")
        if not cid:
            raise DriverError(f"failed to recover task {handle.task!r}: its handle has no container ID")
        state = self._inspect(handle)
        if state is None:
            raise DriverError(f"failed to recover task {handle.task!r}: container {cid[:12]} is gone")
        logs = handle.state.get("logs")
        if logs and self._running(state) and not self._follower_alive(handle):
            self._start_follower(handle, logs["dir"], logs["max_files"], logs["max_size"], since=int(time.time()))

    # --- stop -------------------------------------------------------------------------------

    def signal(self, handle: TaskHandle, signal: str) -> None:
        import docker
        try:
            self.client().api.kill(handle.state["container_id"], signal=signal_number(signal))
        except docker.errors.APIError as e:
            if e.status_code not in (404, 409):  # gone, or not running
                raise DriverError(f"signal {signal}: {_explain(e)}") from None

    def stop(self, handle: TaskHandle, signal: str, timeout: float) -> None:
        if self._result(handle) is not None:
            return
        self.signal(handle, signal)
        if self.wait(handle, timeout) is not None:
            return
        self.signal(handle, "SIGKILL")
        if self.wait(handle, KILL_GRACE) is None:
            raise DriverError(f"task {handle.task!r}: container did not exit after SIGKILL")

    def destroy(self, handle: TaskHandle) -> None:
        cid = handle.state.get("container_id", "")
        if cid and self._result(handle) is None:
            try:
                self.stop(handle, "SIGKILL", 0)
            except DriverError:
                pass
        self._stop_follower(handle)
        if cid:
            self._remove(cid)

    def _remove(self, container_id: str) -> None:
        import docker
        try:
            self.client().api.remove_container(container_id, force=True, v=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as e:
            if e.status_code != 409:  # removal already in progress
                raise DriverError(f"removing container {container_id[:12]}: {_explain(e)}") from None

    def stats(self, handle: TaskHandle) -> TaskStats:
        try:
            state = self._inspect(handle) or {}
        except DriverError:
            return TaskStats()
        pid = int(state.get("Pid") or 0)
        return process_stats(pid) if pid else TaskStats()

    # --- housekeeping -----------------------------------------------------------------------

    def remove_orphans(self, keep_alloc_ids: set[str]) -> list[str]:
        """Remove this client's containers (tasks and pause) of allocations not in ``keep_alloc_ids``."""
        if not self.fingerprint().detected:
            return []
        removed = []
        try:
            containers = self.client().containers.list(all=True, filters={"label": [f"{LABEL_OWNER}={self.owner}"]})
        except Exception:  # noqa: BLE001 - the engine is not usable: nothing to clean here
            return []
        for c in containers:
            alloc_id = c.labels.get(LABEL_ALLOC, "")
            if alloc_id and alloc_id not in keep_alloc_ids:
                try:
                    self._remove(c.id)
                    removed.append(f"{c.name} ({c.id[:12]})")
                except DriverError:
                    pass
        return removed
