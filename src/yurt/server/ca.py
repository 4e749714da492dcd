"""The Connect CA (Consul's built-in provider, primary datacenter): cluster identity, roots,
leaf signing, root rotation with cross-signing, pruning of rotated-out roots.

Everything it keeps is one row of the state store ("ca": cluster ID, trust domain, config, roots
with their private keys) plus the serial counter ("ca_serial"), so it survives restarts and a
restarted server keeps its root and trust domain. Time comes from `clock` (seconds since the
epoch) so tests can move it.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
import string
import threading
import time
import uuid
from typing import Any
from collections.abc import Callable, Collection

from yurt.errors import InvalidInput, PermissionDenied, Unavailable
from yurt.structs import CAConfig, CARoot, CAState, IssuedCert, parse_duration, parse_service_uri
from yurt.structs.connect import service_uri, signing_uri
from yurt.state import StateStore

from . import ca_x509 as x

log = logging.getLogger("yurt.ca")

MIN_LEAF_TTL_NS = 60 * 1_000_000_000          # Consul says 1h; Yurt allows minutes, for tests
MAX_LEAF_TTL_NS = 8760 * 3600 * 1_000_000_000
PROVIDERS = ("yurt", "consul")


class CAError(InvalidInput):
    """A request the CA refuses (bad CSR, bad configuration); the message says why."""


def _uid8() -> str:
    alphabet = string.digits + string.ascii_lowercase
    return "".join(secrets.choice(alphabet) for _ in range(8))


def leaf_ttl_ns(cfg: CAConfig) -> int:
    return parse_duration(cfg.leaf_cert_ttl)


class ConnectCA:
    def __init__(self, store: StateStore, datacenter: str = "dc1", *, clock: Callable[[], float] = time.time,
                 leaf_cert_ttl: str | None = None) -> None:
        self.store = store
        self.datacenter = datacenter
        self.clock = clock
        self._leaf_cert_ttl = leaf_cert_ttl
        self._lock = threading.RLock()
        self.on_issued: Callable[[str], None] = lambda service: None   # each leaf signed (metrics)

    # -- state ------------------------------------------------------------------------------
    def _now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.clock(), dt.UTC).replace(microsecond=0)

    def state(self) -> CAState:
        st = self.store.ca_state()
        if st is None:
            st = self.bootstrap()
        return st

    @property
    def trust_domain(self) -> str:
        return self.state().trust_domain

    def bootstrap(self) -> CAState:
        """At first start: a cluster ID, the trust domain and a root. Later: the stored CA, with
        the agent's -leaf-cert-ttl applied if it was given and differs."""
        with self._lock:
            st = self.store.ca_state()
            if st is None:
                cluster_id = str(uuid.uuid4())
                cfg = CAConfig()
                if self._leaf_cert_ttl:
                    cfg = self._checked_config(cfg.model_copy(update={"leaf_cert_ttl": self._leaf_cert_ttl}))
                st = CAState(cluster_id=cluster_id, trust_domain=f"{cluster_id}.yurt", config=cfg)
                root = self._new_root(st)
                st = st.model_copy(update={"roots": [root], "active_root_id": root.id})
                log.info("Connect CA: new cluster %s, trust domain %s", cluster_id, st.trust_domain)
                return self.store.set_ca_state(st)
            if self._leaf_cert_ttl and self._leaf_cert_ttl != st.config.leaf_cert_ttl:
                cfg = self._checked_config(st.config.model_copy(update={"leaf_cert_ttl": self._leaf_cert_ttl}))
                st = self.store.set_ca_state(st.model_copy(update={"config": cfg}))
            return st

    def _new_root(self, st: CAState, key_pem: str | None = None) -> CARoot:
        key = x.load_key(key_pem) if key_pem else x.new_key()
        serial, index = self.store.next_ca_serial()
        now = self._now()
        cn = f"pri-{_uid8()}.yurt.ca.{st.cluster_id[:8]}.yurt"
        cert = x.make_root(key, cn, signing_uri(st.trust_domain), serial, now,
                           dt.timedelta(microseconds=parse_duration(st.config.root_cert_ttl) / 1000))
        return CARoot(id=x.fingerprint(cert), name="Yurt CA Primary Cert", serial_number=serial,
                      signing_key_id=x.colon_hex(x.key_id(key.public_key())),
                      external_trust_domain=st.cluster_id,
                      not_before=x.rfc3339(cert.not_valid_before_utc),
                      not_after=x.rfc3339(cert.not_valid_after_utc), root_cert=x.cert_pem(cert),
                      active=True, private_key=x.key_pem(key), create_index=index, modify_index=index)

    # -- config and rotation ----------------------------------------------------------------
    def _checked_config(self, cfg: CAConfig) -> CAConfig:
        try:
            leaf = parse_duration(cfg.leaf_cert_ttl)
            root = parse_duration(cfg.root_cert_ttl)
        except ValueError as e:
            raise CAError(str(e)) from None
        if not MIN_LEAF_TTL_NS <= leaf <= MAX_LEAF_TTL_NS:
            raise CAError(f'LeafCertTTL "{cfg.leaf_cert_ttl}" must be between 1m and 8760h')
        if root < 3 * leaf:
            raise CAError(f'RootCertTTL "{cfg.root_cert_ttl}" must be at least 3 x LeafCertTTL')
        if cfg.private_key_type != "ec" or cfg.private_key_bits != 256:
            raise CAError("only PrivateKeyType \"ec\" with PrivateKeyBits 256 is supported")
        return cfg

    def configuration(self) -> dict[str, Any]:
        st = self.state()
        return {"Provider": st.provider, "Config": st.config.to_json(), "State": None,
                "ForceWithoutCrossSigning": False, "CreateIndex": st.create_index,
                "ModifyIndex": st.modify_index, "ClusterID": st.cluster_id}

    def set_configuration(self, body: dict[str, Any]) -> CAState:
        """PUT /v1/connect/ca/configuration. `Config` keys update the configuration; a new
        `PrivateKey` (PEM), or `ForceRotation: true` (a Yurt extension), rotates the root."""
        provider = body.get("Provider") or "yurt"
        if provider not in PROVIDERS:
            raise CAError(f'unknown CA provider "{provider}": Yurt has its built-in one, "yurt" '
                          '(alias "consul")')
        if not isinstance(body.get("Config") or {}, dict):
            raise CAError('Config must be an object of CA settings: {"LeafCertTTL": "72h", ...}')
        raw = dict(body.get("Config") or {})
        key_pem = raw.pop("PrivateKey", None) or None
        force = bool(raw.pop("ForceRotation", False))
        if raw.pop("RootCert", None):
            raise CAError("RootCert cannot be set: give PrivateKey and Yurt makes the root for it")
        st = self.state()
        fields = {k: v for k, v in raw.items() if k in _CONFIG_KEYS}
        unknown = sorted(set(raw) - set(_CONFIG_KEYS) - _IGNORED_KEYS)
        if unknown:
            raise CAError(f"unknown CA config key(s) {', '.join(unknown)}; known: "
                          f"{', '.join(_CONFIG_KEYS)}, PrivateKey, ForceRotation")
        cfg = self._checked_config(CAConfig.model_validate({**st.config.to_json(), **fields}))
        if key_pem:
            try:
                x.load_key(key_pem)
            except ValueError as e:
                raise CAError(f"PrivateKey is not a PEM private key: {e}") from None
        with self._lock:
            st = self.store.set_ca_state(self.state().model_copy(update={"config": cfg, "provider": "yurt"}))
        if key_pem or force:
            return self.rotate(key_pem)
        return st

    def rotate(self, key_pem: str | None = None) -> CAState:
        """A new active root; the old one cross-signs it (prepended to the new root's
        IntermediateCerts) and stays trusted, inactive, until pruned."""
        with self._lock:
            st = self.state()
            old = st.active_root()
            new = self._new_root(st, key_pem)
            now = self._now()
            if old is not None:
                serial, _ = self.store.next_ca_serial()
                xsigned = x.cross_sign(x.load_cert(new.root_cert), x.load_cert(old.root_cert),
                                       x.load_key(old.private_key), serial, now)
                new = new.model_copy(update={"intermediate_certs": [x.cert_pem(xsigned)]})
            roots = [r.model_copy(update={"active": False, "rotated_out_at": x.rfc3339(now),
                                          "rotated_out_ns": int(self.clock() * 1e9)})
                     if r.active else r for r in st.roots] + [new]
            log.info("Connect CA: rotated the root to %s", new.id)
            return self.store.set_ca_state(st.model_copy(update={"roots": roots, "active_root_id": new.id}))

    def prune(self) -> CAState:
        """Drop inactive roots rotated out more than 2 x LeafCertTTL ago."""
        with self._lock:
            st = self.state()
            cutoff = int(self.clock() * 1e9) - 2 * leaf_ttl_ns(st.config)
            keep = [r for r in st.roots if r.active or r.rotated_out_ns > cutoff]
            if len(keep) == len(st.roots):
                return st
            return self.store.set_ca_state(st.model_copy(update={"roots": keep}))

    # -- reading ----------------------------------------------------------------------------
    def roots(self) -> dict[str, Any]:
        st = self.state()
        return {"ActiveRootID": st.active_root_id, "TrustDomain": st.trust_domain,
                "Roots": [r.public() for r in st.roots]}

    # -- signing ----------------------------------------------------------------------------
    def sign(self, csr_pem: str, service: str | None = None, allowed: Collection[str] | None = None,
             who: str = "") -> IssuedCert:
        """Sign a service's CSR: exactly one URI SAN, the SPIFFE ID of a service in this trust
        domain and datacenter (and `service` if given). The key stays with whoever made it."""
        try:
            csr, uris = x.csr_uris(csr_pem)
        except x.CSRError as e:
            raise CAError(str(e)) from None
        if len(uris) != 1:
            raise CAError(f"the CSR must have exactly one URI SAN, it has {len(uris)}")
        st = self.state()
        sid = parse_service_uri(uris[0])
        if sid is None:
            raise CAError(f'"{uris[0]}" is not a service SPIFFE ID '
                          f"(spiffe://<trust-domain>/ns/default/dc/<dc>/svc/<service>)")
        if allowed is not None and sid.service not in allowed:
            raise PermissionDenied(f'{who or "the caller"} runs no allocation with service "{sid.service}", so '
                                   "it cannot have a certificate signed for it"
                                   + (f" (it runs: {', '.join(sorted(allowed))})" if allowed else ""))
        if sid.trust_domain != st.trust_domain.lower():
            raise CAError(f'the CSR is for trust domain "{sid.trust_domain}", this CA signs for '
                          f'"{st.trust_domain}"')
        if sid.datacenter != self.datacenter:
            raise CAError(f'the CSR is for datacenter "{sid.datacenter}", this server is in '
                          f'"{self.datacenter}"')
        if service and sid.service != service:
            raise CAError(f'the CSR is for service "{sid.service}", not "{service}"')
        root = st.active_root()
        if root is None:
            raise Unavailable("the Connect CA has no active root yet: the server is still starting; retry")
        serial, index = self.store.next_ca_serial()
        ttl = dt.timedelta(microseconds=leaf_ttl_ns(st.config) / 1000)
        cert = x.sign_leaf(csr, x.load_cert(root.root_cert), x.load_key(root.private_key),
                           serial, self._now(), ttl, sid.service)
        self.on_issued(sid.service)
        chain = x.cert_pem(cert) + "".join(root.intermediate_certs)
        return IssuedCert(serial_number=x.serial_hex(serial), cert_pem=chain, service=sid.service,
                          service_uri=service_uri(st.trust_domain, self.datacenter, sid.service,
                                                  sid.namespace),
                          valid_after=x.rfc3339(cert.not_valid_before_utc),
                          valid_before=x.rfc3339(cert.not_valid_after_utc),
                          namespace=sid.namespace, create_index=index, modify_index=index)


_CONFIG_KEYS = ("LeafCertTTL", "RootCertTTL", "IntermediateCertTTL", "PrivateKeyType",
                "PrivateKeyBits", "RotationPeriod")
_IGNORED_KEYS = {"CSRMaxPerSecond", "CSRMaxConcurrent", "IntermediateCertTTL"}
