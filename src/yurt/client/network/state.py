"""What was set up for an allocation's network, kept on disk so it can be torn down later.

``<data_dir>/client/network/<alloc id>.json`` holds the mode, the conflist and the CNI result
(and how the plugins were run), written *before* the namespace is created: whatever Yurt
creates always has a state file that says how to undo it, even after a crash or a restart.

``/var/run/yurt/networks/<alloc id>`` names the state file that owns the namespace, so two
agents on one machine (tests, or several clients with their own data dirs) leave each other's
namespaces alone when they reconcile. It lives on tmpfs, like the namespaces themselves.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

OWNERS_DIR = Path("/var/run/yurt/networks")


@dataclass
class NetworkState:
    alloc_id: str
    mode: str                                   # "bridge", "none" or "cni/<name>"
    netns: str                                  # namespace path
    conflist: dict[str, Any] | None = None      # None for "none"
    cni_args: dict[str, str] = field(default_factory=dict)
    capabilities: dict[str, Any] = field(default_factory=dict)
    ifname: str = "eth0"
    cni_paths: list[str] = field(default_factory=list)
    result: dict[str, Any] | None = None        # set once ADD went through
    address: str = ""
    dns: dict[str, Any] | None = None
    resolv_conf: str = ""
    hostname: str = ""
    holder: dict[str, Any] | None = None        # what holds the namespace when not `ip netns add` (docker_pause)

    @property
    def complete(self) -> bool:
        return self.mode == "none" or self.result is not None

    def network_status(self) -> dict[str, Any]:
        status: dict[str, Any] = {"InterfaceName": self.ifname if self.address else "", "Address": self.address}
        if self.dns:
            status["DNS"] = self.dns
        return status


def network_dir(data_dir: str | os.PathLike) -> Path:
    return Path(data_dir) / "client" / "network"


def state_path(data_dir: str | os.PathLike, alloc_id: str) -> Path:
    return network_dir(data_dir) / f"{alloc_id}.json"


def save(data_dir: str | os.PathLike, state: NetworkState) -> None:
    path = state_path(data_dir, state.alloc_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(asdict(state), indent=1))
    os.replace(tmp, path)
    _write_owner(state.alloc_id, path)


def load(data_dir: str | os.PathLike, alloc_id: str) -> NetworkState | None:
    try:
        data = json.loads(state_path(data_dir, alloc_id).read_text())
        return NetworkState(**data)
    except (OSError, ValueError, TypeError):
        return None


def delete(data_dir: str | os.PathLike, alloc_id: str) -> None:
    path = state_path(data_dir, alloc_id)
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    if owner(alloc_id) in (None, str(path.resolve())):
        forget_owner(alloc_id)


def persisted_ids(data_dir: str | os.PathLike) -> list[str]:
    d = network_dir(data_dir)
    return sorted(p.stem for p in d.glob("*.json")) if d.is_dir() else []


EPHEMERAL_MARKER = "ephemeral"  # in a data dir that dies with its agent (`yurt agent -dev`)


def _write_owner(alloc_id: str, path: Path) -> None:
    """Record which data dir (and which agent process) owns an allocation's network."""
    from ..procs import start_time
    try:
        OWNERS_DIR.mkdir(parents=True, exist_ok=True)
        pid = os.getpid()
        (OWNERS_DIR / alloc_id).write_text(f"{path.resolve()}\n{pid}\n{start_time(pid) or ''}\n")
    except OSError:
        pass


def forget_owner(alloc_id: str) -> None:
    try:
        (OWNERS_DIR / alloc_id).unlink()
    except FileNotFoundError:
        pass


def owned_ids() -> list[str]:
    try:
        return sorted(p.name for p in OWNERS_DIR.iterdir())
    except OSError:
        return []


def _owner_record(alloc_id: str) -> tuple[str, int, int | None] | None:
    try:
        lines = (OWNERS_DIR / alloc_id).read_text().splitlines()
    except OSError:
        return None
    if not lines:
        return None
    pid = int(lines[1]) if len(lines) > 1 and lines[1].isdigit() else 0
    start = int(lines[2]) if len(lines) > 2 and lines[2].isdigit() else None
    return lines[0].strip(), pid, start


def owner(alloc_id: str) -> str | None:
    record = _owner_record(alloc_id)
    return record[0] if record else None


def owned_elsewhere(data_dir: str | os.PathLike, alloc_id: str) -> bool:
    """True when another agent's data dir holds the live network state of ``alloc_id``.

    A dev agent's data dir dies with it: once that agent's process is gone (SIGKILL leaves its
    temporary dir behind), its allocations belong to nobody and are cleaned up.
    """
    from ..procs import is_alive
    record = _owner_record(alloc_id)
    if record is None:
        return False
    other, pid, start = record
    mine = str(state_path(data_dir, alloc_id).resolve())
    if not other or other == mine or not Path(other).exists():
        return False
    client_dir = Path(other).parents[2]  # <client data dir>/client/network/<id>.json
    if (client_dir / EPHEMERAL_MARKER).exists() and pid and not is_alive(pid, start):
        return False
    return True
