"""An in-memory MeshSource for tests, benches and `-static-source FILE` (dev only).

Everything the agent would serve, held in one object; every change bumps an index and wakes
the proxy's blocking watches, exactly as the agent's blocking queries would.

File form (JSON), re-read whenever the file changes:
  {"trust_domain": "...", "roots": ["PEM", ...], "intermediates": ["PEM"...],
   "leaves": {"<service>": {"CertPEM": "...", "PrivateKeyPEM": "...", "SerialNumber": "..."}},
   "default_allow": true, "intentions": {"<source>": "allow"|"deny", "*": ...},
   "endpoints": {"<destination>": [{"address": "127.0.0.1", "port": 21000, "datacenter": "dc1"}]}}
"""

from __future__ import annotations

import json
import os
import threading
from typing import Any

from .tls import parse_spiffe


class StaticSource:
    def __init__(self, trust_domain: str = "", roots: list[str] | None = None,
                 intermediates: list[str] | None = None, default_allow: bool = True) -> None:
        self._cond = threading.Condition()
        self._index = 1
        self.trust_domain = trust_domain
        self._roots = list(roots or [])
        self._intermediates = list(intermediates or [])
        self._roots_idx = 1
        self._leaves: dict[str, tuple[dict, int]] = {}
        self._intentions: dict[str, str] = {}
        self._default_allow = default_allow
        self._int_idx = 1
        self._endpoints: dict[str, tuple[list[dict], int]] = {}
        self._closed = False
        self.authorize_calls = 0

    # -- mutation (any thread) ---------------------------------------------------------------
    def _bump(self) -> int:
        self._index += 1
        self._cond.notify_all()
        return self._index

    def set_roots(self, roots: list[str], intermediates: list[str] | None = None,
                  trust_domain: str | None = None) -> None:
        with self._cond:
            self._roots = list(roots)
            self._intermediates = list(intermediates or [])
            if trust_domain:
                self.trust_domain = trust_domain
            self._roots_idx = self._bump()

    def set_leaf(self, service: str, issued: dict) -> None:
        with self._cond:
            self._leaves[service] = (dict(issued), self._bump())

    def set_intention(self, source: str, action: str | None) -> None:
        with self._cond:
            if action is None:
                self._intentions.pop(source, None)
            else:
                self._intentions[source] = action
            self._int_idx = self._bump()

    def set_default_allow(self, allow: bool) -> None:
        with self._cond:
            self._default_allow = allow
            self._int_idx = self._bump()

    def set_endpoints(self, destination: str, instances: list[dict]) -> None:
        """instances: [{"address", "port", "datacenter"?, "status"?}] → health entries."""
        entries = [{"Node": {"Address": i["address"], "Datacenter": i.get("datacenter", "dc1")},
                    "Service": {"ID": i.get("id", f"{destination}-sidecar-proxy-{n}"),
                                "Service": f"{destination}-sidecar-proxy", "Address": i["address"],
                                "Port": int(i["port"]), "Proxy": {"DestinationServiceName": destination}},
                    "Checks": [{"Status": i.get("status", "passing")}]}
                   for n, i in enumerate(instances)]
        with self._cond:
            self._endpoints[destination] = (entries, self._bump())

    # -- MeshSource ----------------------------------------------------------------------------
    def _block(self, current: Any, index: int, wait: float) -> None:
        if index and current() <= index and not self._closed:
            self._cond.wait_for(lambda: self._closed or current() > index, timeout=wait)

    def roots(self, index: int, wait: float) -> tuple[dict, int]:
        with self._cond:
            self._block(lambda: self._roots_idx, index, wait)
            roots = [{"ID": f"root-{n}", "RootCert": pem, "Active": n == len(self._roots) - 1,
                      "IntermediateCerts": self._intermediates if n == len(self._roots) - 1 else None}
                     for n, pem in enumerate(self._roots)]
            return ({"TrustDomain": self.trust_domain, "ActiveRootID": f"root-{len(roots) - 1}",
                     "Roots": roots}, self._roots_idx)

    def leaf(self, service: str, index: int, wait: float) -> tuple[dict, int]:
        with self._cond:
            self._block(lambda: self._leaves.get(service, ({}, 0))[1], index, wait)
            if service not in self._leaves:  # as the agent would: wait for it to be issued
                self._cond.wait_for(lambda: self._closed or service in self._leaves, timeout=wait)
            if service not in self._leaves:
                raise LookupError(f"no leaf certificate for service {service!r}")
            return self._leaves[service]

    def intentions(self, service: str, index: int, wait: float) -> tuple[Any, int]:
        with self._cond:
            self._block(lambda: self._int_idx, index, wait)
            return dict(self._intentions), self._int_idx

    def authorize(self, service: str, client_uri: str, serial: str) -> tuple[bool, str]:
        sid = parse_spiffe(client_uri)
        if sid is None:
            return False, "client certificate URI is not a service SPIFFE ID"
        with self._cond:
            self.authorize_calls += 1
            for key in (sid.service, "*"):
                action = self._intentions.get(key)
                if action is not None:
                    return action == "allow", f"Matched L4 intention: {key} => {service} ({action})"
            allow = self._default_allow
        return allow, "Default intention policy" + (" (allow)" if allow else " (deny)")

    def endpoints(self, destination: str, datacenter: str, index: int, wait: float) -> tuple[list[dict], int]:
        with self._cond:
            self._block(lambda: self._endpoints.get(destination, ([], 1))[1], index, wait)
            return self._endpoints.get(destination, ([], 1))

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    # -- file form ------------------------------------------------------------------------------
    def load_dict(self, doc: dict) -> None:
        self.set_roots(doc.get("roots", []), doc.get("intermediates"), doc.get("trust_domain"))
        for svc, issued in (doc.get("leaves") or {}).items():
            cur = self._leaves.get(svc)
            if cur is None or cur[0].get("CertPEM") != issued.get("CertPEM"):
                self.set_leaf(svc, issued)
        with self._cond:
            self._intentions = dict(doc.get("intentions") or {})
            self._default_allow = bool(doc.get("default_allow", True))
            self._int_idx = self._bump()
        for dest, insts in (doc.get("endpoints") or {}).items():
            self.set_endpoints(dest, insts)

    @classmethod
    def from_file(cls, path: str, poll: float = 0.5) -> "StaticSource":
        src = cls()
        with open(path) as f:
            src.load_dict(json.load(f))
        state = {"mtime": os.stat(path).st_mtime_ns}

        def follow() -> None:
            while not src._closed:
                threading.Event().wait(poll)
                try:
                    m = os.stat(path).st_mtime_ns
                    if m != state["mtime"]:
                        state["mtime"] = m
                        with open(path) as f:
                            src.load_dict(json.load(f))
                except (OSError, ValueError):
                    pass

        threading.Thread(target=follow, name="yurt-static-source", daemon=True).start()
        return src
