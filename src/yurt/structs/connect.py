"""Connect (service mesh) control-plane data: intentions, CA roots and state, issued leaf
certificates, and SPIFFE IDs. Pure data; the certificate work is in yurt.server.ca."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .base import Struct, field

ACTION_ALLOW = "allow"
ACTION_DENY = "deny"
WILDCARD = "*"


class Intention(Struct):
    """Consul's legacy intention view: source -> destination, allow or deny."""

    id: str = field("", json="ID")
    description: str = ""
    source_ns: str = field("default", json="SourceNS")
    source_name: str = ""
    destination_ns: str = field("default", json="DestinationNS")
    destination_name: str = ""
    source_type: str = "consul"
    action: str = ACTION_ALLOW
    permissions: list[dict[str, Any]] | None = None
    meta: dict[str, str] = field(factory=dict)
    precedence: int = 0
    created_at: str = ""
    updated_at: str = ""
    create_index: int = 0
    modify_index: int = 0

    def public(self) -> dict[str, Any]:
        d = self.to_json()
        if d["Permissions"] is None:
            d.pop("Permissions")
        else:
            d.pop("Action")
        return d


class CARoot(Struct):
    id: str = field("", json="ID")
    name: str = ""
    serial_number: int = 0
    signing_key_id: str = field("", json="SigningKeyID")
    external_trust_domain: str = ""
    not_before: str = ""
    not_after: str = ""
    root_cert: str = ""
    intermediate_certs: list[str] = field(factory=list)
    active: bool = False
    rotated_out_at: str = ""
    rotated_out_ns: int = 0       # RotatedOutAt as a number, for pruning
    private_key_type: str = "ec"
    private_key_bits: int = 256
    private_key: str = ""         # PEM; never leaves the server
    create_index: int = 0
    modify_index: int = 0

    def public(self) -> dict[str, Any]:
        d = self.to_json()
        for k in ("PrivateKey", "RotatedOutNs"):
            d.pop(k)
        d["IntermediateCerts"] = d["IntermediateCerts"] or None
        if not d["RotatedOutAt"]:
            d["RotatedOutAt"] = "0001-01-01T00:00:00Z"
        return d


class CAConfig(Struct):
    """The CA configuration (Consul's `Config` map, with Yurt's defaults). Durations are Go
    duration strings as in Consul's API."""

    leaf_cert_ttl: str = field("72h", json="LeafCertTTL")
    root_cert_ttl: str = field("87600h", json="RootCertTTL")
    intermediate_cert_ttl: str = field("8760h", json="IntermediateCertTTL")
    private_key_type: str = "ec"
    private_key_bits: int = 256
    rotation_period: str = "2160h"


class CAState(Struct):
    """Everything the CA keeps in the store (one row)."""

    cluster_id: str = field("", json="ClusterID")
    trust_domain: str = ""
    provider: str = "yurt"
    config: CAConfig = field(factory=CAConfig)
    active_root_id: str = field("", json="ActiveRootID")
    roots: list[CARoot] = field(factory=list)
    create_index: int = 0
    modify_index: int = 0

    def active_root(self) -> CARoot | None:
        for r in self.roots:
            if r.id == self.active_root_id:
                return r
        return None


class IssuedCert(Struct):
    serial_number: str = ""
    cert_pem: str = field("", json="CertPEM")
    private_key_pem: str = field("", json="PrivateKeyPEM")
    service: str = ""
    service_uri: str = field("", json="ServiceURI")
    valid_after: str = ""
    valid_before: str = ""
    namespace: str = "default"
    create_index: int = 0
    modify_index: int = 0


# -- SPIFFE IDs ---------------------------------------------------------------------------------

_SERVICE = re.compile(r"^/ns/([^/]+)/dc/([^/]+)/svc/([^/]+)$")


@dataclass(frozen=True)
class SpiffeService:
    trust_domain: str
    namespace: str
    datacenter: str
    service: str

    @property
    def uri(self) -> str:
        return service_uri(self.trust_domain, self.datacenter, self.service, self.namespace)


# a SPIFFE ID's path segment (a service's, in its certificate's URI SAN): ASCII letters, digits,
# ".", "-" and "_" only (the SPIFFE ID specification, section 2.2); at most 64 characters, as the
# certificate's common name is the service's name
_SPIFFE_SEGMENT = re.compile(r"[A-Za-z0-9._-]{1,64}")


def service_name_problem(service: str) -> str:
    """Why `service` cannot be the service segment of a SPIFFE ID (a leaf certificate's), or ""."""
    if _SPIFFE_SEGMENT.fullmatch(service) and service not in (".", ".."):
        return ""
    shown = service if len(service) <= 80 else service[:77] + "..."
    return (f'service name "{shown}" cannot be in a certificate\'s SPIFFE ID: it must be 1 to 64 ASCII '
            'letters, digits, ".", "-" and "_" (a SPIFFE path segment), and not "." or ".."')


def service_uri(trust_domain: str, datacenter: str, service: str, namespace: str = "default") -> str:
    return f"spiffe://{trust_domain}/ns/{namespace}/dc/{datacenter}/svc/{service}"


def signing_uri(trust_domain: str) -> str:
    return f"spiffe://{trust_domain}"


def parse_service_uri(uri: str) -> SpiffeService | None:
    """`spiffe://<td>/ns/<ns>/dc/<dc>/svc/<name>` -> its parts; anything else -> None."""
    if not uri.lower().startswith("spiffe://"):
        return None
    rest = uri[len("spiffe://"):]
    host, sep, path = rest.partition("/")
    m = _SERVICE.match("/" + path) if sep and host else None
    if not m:
        return None
    return SpiffeService(host.lower(), m.group(1), m.group(2), m.group(3))


def leaf_key(service: str, dns_sans: list[str] | tuple[str, ...] = ()) -> str:
    """The cache key of a leaf: the service, or with DNS SANs (an ingress gateway's certificate
    for its hosts, served at the edge) `<service>?dns=<a>,<b>`."""
    dns = sorted({d.strip().lower() for d in dns_sans if d.strip()})
    return f"{service}?dns={','.join(dns)}" if dns else service


def split_key(key: str) -> tuple[str, tuple[str, ...]]:
    service, _, dns = key.partition("?dns=")
    return service, tuple(d for d in dns.split(",") if d)
