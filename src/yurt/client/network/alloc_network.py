"""Setting up and tearing down one allocation's network namespace.

``setup`` is idempotent: called again for an allocation whose namespace and state are there
(an agent restart), it reuses them. Anything it creates is undone when it fails half-way, so a
failed setup leaves no namespace, no address, no rule behind.
"""

from __future__ import annotations

import logging
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from yurt.client.drivers.base import NetnsHolder

from . import bridge, cni, netns, rules
from . import state as netstate
from .portmap import HostPortInUse
from .state import NetworkState

log = logging.getLogger(__name__)

ADD_ATTEMPTS = 3
MODES = ("host", "bridge", "none", "cni/<name>")


class NetworkError(Exception):
    """Setting up the network failed; str() says why and what to do."""


@dataclass
class NetworkSpec:
    alloc_id: str
    mode: str
    cni_args: dict[str, str] = field(default_factory=dict)     # CNI_ARGS, in order
    port_mappings: list[dict[str, Any]] = field(default_factory=list)
    dns: dict[str, Any] | None = None                           # {"Servers", "Searches", "Options"}
    hostname: str = ""
    cni_paths: tuple[str, ...] = cni.DEFAULT_CNI_PATHS
    cni_config_dirs: tuple[str, ...] = cni.DEFAULT_CNI_CONFIG_DIRS
    check_ports: Any = None                                     # callable run before ADD (port check)
    # creates the namespace at /var/run/netns/<alloc id>, held by something else than
    # `ip netns add` (the docker driver's pause container); see drivers.base.NetnsHolder
    holder: NetnsHolder | None = None


def conflist_for(mode: str, config_dirs: tuple[str, ...]) -> dict[str, Any] | None:
    if mode == "bridge":
        return bridge.conflist()
    if mode == "none":
        return None
    if mode.startswith("cni/") and mode[4:]:
        try:
            return cni.load_network(mode[4:], config_dirs)
        except cni.CNIError as e:
            raise NetworkError(str(e)) from None
    raise NetworkError(f'network mode "{mode}" is not supported: use one of {", ".join(MODES)}')


def runtime_for(st: NetworkState) -> cni.Runtime:
    return cni.Runtime(container_id=st.alloc_id, netns=st.netns, ifname=st.ifname, args=dict(st.cni_args),
                       capabilities=dict(st.capabilities),
                       paths=tuple(st.cni_paths) or cni.DEFAULT_CNI_PATHS)


def resolv_conf_text(dns: dict[str, Any] | None) -> tuple[str, bool]:
    """The resolv.conf for the namespace and whether it differs from the host's.

    With a ``dns`` block it is built from it. Otherwise the host's, except when the host points
    at a loopback stub resolver (systemd-resolved's 127.0.0.53), which nothing in the namespace
    can reach: then the stub's upstream file is used when there is one.
    """
    if dns and (dns.get("Servers") or dns.get("Searches") or dns.get("Options")):
        lines = [f"nameserver {s}" for s in dns.get("Servers") or []]
        if dns.get("Searches"):
            lines.append("search " + " ".join(dns["Searches"]))
        if dns.get("Options"):
            lines.append("options " + " ".join(dns["Options"]))
        return "\n".join(lines) + "\n", True
    host = _read("/etc/resolv.conf")
    servers = [line.split()[1] for line in host.splitlines()
               if line.startswith("nameserver") and len(line.split()) > 1]
    if servers and all(s.startswith("127.") or s == "::1" for s in servers):
        upstream = _read("/run/systemd/resolve/resolv.conf")
        if upstream:
            return upstream, True
    return host, False


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def setup(data_dir: str | os.PathLike, spec: NetworkSpec) -> NetworkState:
    """Create (or, after a restart, find again) the allocation's network. Raises NetworkError."""
    existing = netstate.load(data_dir, spec.alloc_id)
    if existing is not None:
        if existing.complete and netns.exists(spec.alloc_id) and _holder_alive(existing):
            _check(existing)
            _write_resolv_conf(existing, spec.dns)
            return existing
        teardown(data_dir, existing)  # a half-made network from before a crash, or a reboot

    conflist = conflist_for(spec.mode, spec.cni_config_dirs)
    if conflist is not None:
        missing = cni.missing_plugins(conflist, spec.cni_paths)
        if missing:
            raise NetworkError(f'CNI plugin "{missing[0]}" not found in {":".join(spec.cni_paths)}: '
                               f"{cni.INSTALL_HINT}")
    if spec.check_ports is not None:
        try:
            spec.check_ports()
        except HostPortInUse as e:
            raise NetworkError(str(e)) from None

    st = NetworkState(alloc_id=spec.alloc_id, mode=spec.mode, netns=netns.path(spec.alloc_id),
                      conflist=conflist, cni_args=dict(spec.cni_args),
                      capabilities={"portMappings": spec.port_mappings} if spec.port_mappings else {},
                      cni_paths=list(spec.cni_paths), hostname=spec.hostname)
    try:
        if spec.mode == "bridge":
            bridge.ensure_admin_chain()
        netstate.save(data_dir, st)  # before anything exists: a crash from here on is undoable
        if spec.holder is not None:
            st.holder = spec.holder(spec.alloc_id, spec.hostname, spec.dns)
            netstate.save(data_dir, st)
        netns.create(spec.alloc_id)
        if conflist is not None:
            st.result = _add(conflist, st)
            st.address = cni.result_address(st.result, st.ifname)
        st.dns = spec.dns or _result_dns(st.result)
        _write_resolv_conf(st, spec.dns)
        netstate.save(data_dir, st)
        return st
    except Exception as e:
        errors = teardown(data_dir, st)
        if errors:
            log.warning("alloc %s: rolling back its network: %s", spec.alloc_id, "; ".join(errors))
        if isinstance(e, NetworkError):
            raise
        raise NetworkError(str(e)) from e


def _add(conflist: dict[str, Any], st: NetworkState) -> dict[str, Any]:
    runtime = runtime_for(st)
    for attempt in range(1, ADD_ATTEMPTS + 1):
        try:
            return cni.add_list(conflist, runtime)
        except cni.CNIError as e:
            cni.del_list(conflist, runtime, None)  # undo what the plugins before it added
            if attempt == ADD_ATTEMPTS:
                raise NetworkError(str(e)) from None
            log.info("alloc %s: CNI ADD attempt %d failed (%s); retrying", st.alloc_id, attempt, e)
            time.sleep(random.uniform(0.3, 0.8))
    raise AssertionError("unreachable")


def _holder_alive(st: NetworkState) -> bool:
    if not st.holder:
        return True
    from yurt.client.drivers import docker_pause
    return docker_pause.alive(st.holder)


def _check(st: NetworkState) -> None:
    """After a restart: is the namespace still what the stored result says? (warn only)"""
    if st.address and st.address not in netns.addresses(st.alloc_id, st.ifname):
        log.warning("alloc %s: %s in namespace %s no longer has address %s", st.alloc_id, st.ifname,
                    st.alloc_id, st.address)
        return
    if st.conflist and st.result:
        try:
            cni.check_list(st.conflist, runtime_for(st), st.result)
        except cni.CNIError as e:
            log.warning("alloc %s: CNI CHECK: %s", st.alloc_id, e)


def _result_dns(result: dict[str, Any] | None) -> dict[str, Any] | None:
    dns = (result or {}).get("dns") or {}
    out = {"Servers": dns.get("nameservers") or [], "Searches": dns.get("search") or [],
           "Options": dns.get("options") or []}
    return out if any(out.values()) else None


def _write_resolv_conf(st: NetworkState, dns: dict[str, Any] | None) -> None:
    text, custom = resolv_conf_text(dns)
    st.resolv_conf = text
    if custom:
        netns.write_resolv_conf(st.alloc_id, text)


def teardown(data_dir: str | os.PathLike, st: NetworkState) -> list[str]:
    """Undo everything ``st`` records (idempotent); the problems met, empty when none."""
    errors: list[str] = []
    if st.conflist:
        errors += cni.del_list(st.conflist, runtime_for(st), st.result)
    try:
        rules.purge({st.alloc_id}, {st.address} if st.address else set())  # what DEL did not remove
    except Exception as e:  # noqa: BLE001 - cleaning up must go on
        errors.append(f"iptables cleanup: {e}")
    try:
        netns.delete(st.alloc_id)
    except netns.NetnsError as e:
        errors.append(str(e))
    if st.holder:
        from yurt.client.drivers import docker_pause
        errors += docker_pause.release(st.holder)
    if not errors or not netns.exists(st.alloc_id):
        netstate.delete(data_dir, st.alloc_id)
    return errors


def teardown_alloc(data_dir: str | os.PathLike, alloc_id: str) -> list[str]:
    """Tear down the allocation's network if one was set up here (idempotent)."""
    st = netstate.load(data_dir, alloc_id)
    if st is None:
        if netns.exists(alloc_id) and not netstate.owned_elsewhere(data_dir, alloc_id):
            netns.delete(alloc_id)
        return []
    return teardown(data_dir, st)
