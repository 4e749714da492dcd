"""Running CNI plugins as the CNI spec says (what libcni does for a network list).

A plugin is an executable found on the CNI path. It is run with ``CNI_COMMAND`` (ADD, DEL or
CHECK), ``CNI_CONTAINERID``, ``CNI_NETNS``, ``CNI_IFNAME``, ``CNI_ARGS`` and ``CNI_PATH`` in
its environment and its configuration on stdin: the plugin's entry of the list plus the list's
``name`` and ``cniVersion``, the previous plugin's result as ``prevResult`` and, for the
capabilities it declares, ``runtimeConfig``. Errors come back on stdout as
``{"code", "msg", "details"}``.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .iptables import SBIN_PATH

# Nomad's path first, then Debian's (containernetworking-plugins installs to /usr/lib/cni).
DEFAULT_CNI_PATHS = ("/opt/cni/bin", "/usr/libexec/cni", "/usr/lib/cni")
DEFAULT_CNI_CONFIG_DIRS = ("/opt/cni/config", "/etc/cni/net.d")
INSTALL_HINT = "install containernetworking-plugins (apt-get install containernetworking-plugins)"
PLUGIN_TIMEOUT = 60


class CNIError(Exception):
    """A plugin failed, is missing, or a configuration cannot be used; str() is for users."""

    def __init__(self, message: str, *, plugin: str = "", code: int = 0) -> None:
        super().__init__(message)
        self.plugin = plugin
        self.code = code


def find_plugin(kind: str, paths: tuple[str, ...] | list[str] = DEFAULT_CNI_PATHS) -> str:
    for d in paths:
        candidate = Path(d) / kind
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise CNIError(f'CNI plugin "{kind}" not found in {":".join(paths)}: {INSTALL_HINT}', plugin=kind)


def missing_plugins(conflist: Mapping[str, Any], paths: tuple[str, ...] | list[str]) -> list[str]:
    out = []
    for plugin in conflist.get("plugins", []):
        try:
            find_plugin(plugin.get("type", ""), paths)
        except CNIError:
            out.append(plugin.get("type", ""))
    return out


@dataclass
class Runtime:
    """What a network list is run against: one container (allocation) and its namespace."""

    container_id: str
    netns: str
    ifname: str = "eth0"
    args: dict[str, str] = field(default_factory=dict)          # -> CNI_ARGS
    capabilities: dict[str, Any] = field(default_factory=dict)  # e.g. {"portMappings": [...]}
    paths: tuple[str, ...] = DEFAULT_CNI_PATHS

    def cni_args(self) -> str:
        return ";".join(f"{k}={v}" for k, v in self.args.items() if ";" not in f"{k}{v}")


def _plugin_config(conflist: Mapping[str, Any], plugin: Mapping[str, Any], runtime: Runtime,
                   prev: Mapping[str, Any] | None) -> dict[str, Any]:
    conf = dict(plugin)
    conf["name"] = conflist["name"]
    conf["cniVersion"] = conflist.get("cniVersion", "0.4.0")
    if prev is not None:
        conf["prevResult"] = prev
    wanted = {k: v for k, v in runtime.capabilities.items() if (plugin.get("capabilities") or {}).get(k)}
    if wanted:
        conf["runtimeConfig"] = {**(plugin.get("runtimeConfig") or {}), **wanted}
    return conf


def _error_message(kind: str, command: str, stdout: bytes, stderr: bytes, rc: int) -> tuple[str, int]:
    text = stdout.decode(errors="replace").strip()
    try:
        err = json.loads(text) if text else {}
    except ValueError:
        err = {}
    if isinstance(err, dict) and (err.get("msg") or err.get("code")):
        msg = err.get("msg") or f"error code {err.get('code')}"
        if err.get("details"):
            msg = f"{msg}: {err['details']}"
        return msg, int(err.get("code") or 0)
    detail = stderr.decode(errors="replace").strip() or text or f"exit status {rc}"
    return detail, 0


def exec_plugin(command: str, conflist: Mapping[str, Any], plugin: Mapping[str, Any], runtime: Runtime,
                prev: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Run one plugin; its parsed result (ADD) or None (DEL, CHECK). Raises CNIError."""
    kind = plugin.get("type", "")
    exe = find_plugin(kind, runtime.paths)
    env = dict(os.environ)
    env["PATH"] = env.get("PATH", "") + ":" + SBIN_PATH  # plugins run iptables, ip, ...
    env.update({"CNI_COMMAND": command, "CNI_CONTAINERID": runtime.container_id,
                "CNI_NETNS": runtime.netns, "CNI_IFNAME": runtime.ifname,
                "CNI_ARGS": runtime.cni_args(), "CNI_PATH": ":".join(runtime.paths)})
    stdin = json.dumps(_plugin_config(conflist, plugin, runtime, prev)).encode()
    try:
        proc = subprocess.run([exe], input=stdin, capture_output=True, env=env, timeout=PLUGIN_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise CNIError(f'CNI plugin "{kind}" ({command}) did not answer within {PLUGIN_TIMEOUT}s',
                       plugin=kind) from None
    except OSError as e:
        raise CNIError(f'CNI plugin "{kind}" ({exe}) cannot be run: {e}', plugin=kind) from None
    if proc.returncode != 0:
        msg, code = _error_message(kind, command, proc.stdout, proc.stderr, proc.returncode)
        raise CNIError(f'CNI plugin "{kind}" failed ({command}): {msg}', plugin=kind, code=code)
    if command != "ADD":
        return None
    try:
        result = json.loads(proc.stdout or b"{}")
    except ValueError:
        raise CNIError(f'CNI plugin "{kind}" (ADD) printed a result that is not JSON: '
                       f'{proc.stdout[:200]!r}', plugin=kind) from None
    return result if isinstance(result, dict) else {}


def add_list(conflist: Mapping[str, Any], runtime: Runtime) -> dict[str, Any]:
    """ADD every plugin in order, each seeing the previous result; the final result."""
    result: dict[str, Any] | None = None
    for plugin in conflist.get("plugins", []):
        out = exec_plugin("ADD", conflist, plugin, runtime, result)
        if out is not None:
            result = out
    return result or {"cniVersion": conflist.get("cniVersion", "0.4.0")}


def check_list(conflist: Mapping[str, Any], runtime: Runtime, result: Mapping[str, Any]) -> None:
    for plugin in conflist.get("plugins", []):
        exec_plugin("CHECK", conflist, plugin, runtime, result)


def del_list(conflist: Mapping[str, Any], runtime: Runtime, result: Mapping[str, Any] | None) -> list[str]:
    """DEL every plugin in reverse order (all are tried); the errors, empty when all went well."""
    errors = []
    for plugin in reversed(conflist.get("plugins", [])):
        try:
            exec_plugin("DEL", conflist, plugin, runtime, result or None)
        except CNIError as e:
            errors.append(str(e))
    return errors


# --- user networks (network mode "cni/<name>") -------------------------------------------------

def load_network(name: str, config_dirs: tuple[str, ...] | list[str] = DEFAULT_CNI_CONFIG_DIRS) -> dict[str, Any]:
    """The conflist named ``name``: ``<name>.conflist`` or any .conflist/.conf/.json whose "name"
    is ``name``, looked for in ``config_dirs`` in order. A single-plugin .conf becomes a list."""
    searched = []
    for d in config_dirs:
        directory = Path(d)
        searched.append(str(directory))
        if not directory.is_dir():
            continue
        files = sorted(p for p in directory.iterdir() if p.suffix in (".conflist", ".conf", ".json"))
        exact = [p for p in files if p.name == f"{name}.conflist"]
        for p in exact + [p for p in files if p not in exact]:
            try:
                conf = json.loads(p.read_text())
            except (OSError, ValueError) as e:
                if p in exact:
                    raise CNIError(f"CNI network {name!r}: {p} is not valid JSON: {e}") from None
                continue
            if not isinstance(conf, dict) or (p not in exact and conf.get("name") != name):
                continue
            if "plugins" not in conf:  # a single plugin's .conf
                plugin = {k: v for k, v in conf.items() if k not in ("name", "cniVersion")}
                conf = {"cniVersion": conf.get("cniVersion", "0.4.0"), "name": conf.get("name", name),
                        "plugins": [plugin]}
            conf.setdefault("name", name)
            if not conf.get("plugins"):
                raise CNIError(f"CNI network {name!r} in {p} has no plugins")
            return conf
    raise CNIError(f'CNI network "{name}" not found: no {name}.conflist (or .conf/.json with "name": "{name}") '
                   f'in {", ".join(searched)}')


def result_address(result: Mapping[str, Any] | None, ifname: str = "eth0") -> str:
    """The IPv4 address (no prefix) the result gives the container's ``ifname``."""
    if not result:
        return ""
    interfaces = result.get("interfaces") or []
    wanted = {i for i, iface in enumerate(interfaces) if iface.get("sandbox") and iface.get("name") == ifname}
    fallback = ""
    for ip in result.get("ips") or []:
        address = str(ip.get("address", "")).split("/")[0]
        if ":" in address or not address:
            continue
        if ip.get("interface") in wanted:
            return address
        fallback = fallback or address
    return fallback
