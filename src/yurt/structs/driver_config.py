"""What each built-in driver accepts in a task's `config` block, checked before anything runs.

Nomad checks driver config against each plugin's schema when a job is submitted; Yurt does the
same with these tables, so `yurt job validate` names a bad key with its position, and the
drivers check again (a job may come from another agent version).
"""

from __future__ import annotations

from typing import Any

STR, BOOL, LIST, MAP, MOUNTS, INT = ("a string", "a boolean", "a list of strings", "a map",
                                     "a list of mount blocks", "a whole number")

SCHEMAS: dict[str, dict[str, str]] = {
    "docker": {
        "image": STR, "command": STR, "args": LIST, "entrypoint": LIST, "ports": LIST, "volumes": LIST,
        "mount": MOUNTS, "labels": MAP, "work_dir": STR, "network_mode": STR, "privileged": BOOL,
        "auth_soft_fail": BOOL, "force_pull": BOOL, "auth": MAP, "hostname": STR, "dns_servers": LIST,
    },
    "exec": {"command": STR, "args": LIST, "pid_mode": STR, "ipc_mode": STR, "cap_add": LIST, "cap_drop": LIST},
    "raw_exec": {"command": STR, "args": LIST},
}
REQUIRED = {"docker": ("image",), "exec": ("command",), "raw_exec": ("command",)}
# What Yurt's own sidecar proxy (driver "connect-proxy", mesh/config.py from_dict) reads of its
# task's config; the server writes the first five (and metrics_addr, on the injected
# connect-proxy-<service>-metrics port the catalog advertises) when it injects the task.
CONNECT_PROXY_KEYS = ("service", "listen", "local_addr", "local_port", "upstreams", "datacenter",
                      "handshake_timeout_ms", "connect_timeout_ms", "max_connections", "idle_timeout_ms",
                      "workers", "debug_modules", "ready_addr", "metrics_addr", "gateway")
MOUNT_KEYS = {"type", "source", "target", "readonly", "bind_options", "volume_options", "tmpfs_options"}


def block(value: Any) -> Any:
    """HCL blocks arrive as a one-element list of maps; take the map."""
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict):
        return value[0]
    return value


def _is(kind: str, value: Any) -> bool:
    if kind == STR:
        return isinstance(value, str)
    if kind == BOOL:
        return isinstance(value, bool)
    if kind == INT:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == LIST:
        return isinstance(value, list) and all(isinstance(v, (str, int, float)) for v in value)
    if kind == MAP:
        return isinstance(block(value), dict)
    if kind == MOUNTS:
        value = [value] if isinstance(value, dict) else value
        return isinstance(value, list) and all(isinstance(v, dict) for v in value)
    return True


def config_problems(driver: str, config: dict[str, Any] | None) -> list[tuple[str, str]]:
    """(key, message) for every problem of `config` for a built-in driver; [] for other drivers."""
    schema = SCHEMAS.get(driver)
    if schema is None:
        return []
    config = config or {}
    out: list[tuple[str, str]] = []
    for key, value in config.items():
        kind = schema.get(key)
        if kind is None:
            out.append((key, f'unknown {driver} config key "{key}": the {driver} driver reads '
                             + ", ".join(sorted(schema))))
        elif not _is(kind, value):
            out.append((key, f'{driver} config "{key}" must be {kind}, not {type(value).__name__}'))
    for key in REQUIRED.get(driver, ()):
        if not config.get(key):
            out.append((key, f'the {driver} driver needs config {{ {key} = ... }}'))
    if driver == "docker":
        mounts = config.get("mount") or []
        for m in ([mounts] if isinstance(mounts, dict) else mounts if isinstance(mounts, list) else []):
            if not isinstance(m, dict):
                continue
            unknown = sorted(set(m) - MOUNT_KEYS)
            if unknown:
                out.append(("mount", f'unknown docker mount key "{unknown[0]}": a mount has '
                                     + ", ".join(sorted(MOUNT_KEYS))))
            if not m.get("target"):
                out.append(("mount", 'a docker mount needs a "target"'))
            if m.get("type", "volume") not in ("bind", "volume", "tmpfs"):
                out.append(("mount", f'docker mount type "{m.get("type")}" is not bind, volume or tmpfs'))
    return out
