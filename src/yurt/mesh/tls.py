"""TLS for the mesh: contexts built from a leaf + CA roots, SPIFFE IDs, peer identity.

Only the stdlib `ssl` module is used here (no `cryptography`), so the proxy stays small.
Both directions are TLS 1.3 only with a client certificate required; the chain is verified by
OpenSSL against every root in the bundle (rotated-out roots included), intermediates such as a
cross-signed root are taken from the peer's chain. Hostname checks are off: identity is the
certificate's first URI SAN, a SPIFFE ID, checked by the caller.
"""

from __future__ import annotations

import os
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field

# A TCP FIN without close_notify reads as a clean EOF: the proxy half-closes at the TCP level,
# and the byte stream it carries frames itself (L4 proxy).
_IGNORE_EOF = getattr(ssl, "OP_IGNORE_UNEXPECTED_EOF", 1 << 7)


@dataclass(frozen=True)
class SpiffeID:
    trust_domain: str
    namespace: str
    datacenter: str
    service: str

    @property
    def uri(self) -> str:
        return f"spiffe://{self.trust_domain}/ns/{self.namespace}/dc/{self.datacenter}/svc/{self.service}"

    def __str__(self) -> str:
        return self.uri


def service_uri(trust_domain: str, datacenter: str, service: str, namespace: str = "default") -> str:
    return SpiffeID(trust_domain, namespace, datacenter, service).uri


def parse_spiffe(uri: str) -> SpiffeID | None:
    """A service SPIFFE ID `spiffe://<td>/ns/<ns>/dc/<dc>/svc/<svc>` (optionally `/ap/<p>` first),
    or None for anything else (agent, gateway, garbage)."""
    if not uri or not uri.lower().startswith("spiffe://"):
        return None
    rest = uri[len("spiffe://"):]
    td, _, path = rest.partition("/")
    parts = path.split("/")
    if len(parts) >= 2 and parts[0] == "ap":
        parts = parts[2:]
    if len(parts) != 6 or parts[0] != "ns" or parts[2] != "dc" or parts[4] != "svc" or not td:
        return None
    if "%" in path:
        from urllib.parse import unquote
        parts = [unquote(p) for p in parts]
    if not all(parts[i] for i in (1, 3, 5)):
        return None
    return SpiffeID(td.lower(), parts[1], parts[3], parts[5])


@dataclass(frozen=True)
class PeerCert:
    uri: str  # first URI SAN ("" if none)
    serial: str  # colon-hex, as Consul prints serials
    not_after: str


_EXPIRY: dict[str, float] = {}


def expired(not_after: str, now: float | None = None) -> bool:
    """A resumed session's peer certificate is not checked again by OpenSSL: the proxy refuses
    it once the certificate it was made with has expired (its notAfter as getpeercert gives it)."""
    t = _EXPIRY.get(not_after)
    if t is None:
        if len(_EXPIRY) > 1024:
            _EXPIRY.clear()
        try:
            t = _EXPIRY[not_after] = float(ssl.cert_time_to_seconds(not_after))
        except ValueError:
            t = _EXPIRY[not_after] = 0.0
    return (time.time() if now is None else now) >= t


def peer_cert(sock: ssl.SSLSocket | ssl.SSLObject) -> PeerCert | None:
    """The verified peer certificate's identity fields (None if the peer sent none)."""
    info = sock.getpeercert()
    if not info:
        return None
    uri = next((v for k, v in info.get("subjectAltName", ()) if k == "URI"), "")
    serial = info.get("serialNumber", "")
    if len(serial) % 2:
        serial = "0" + serial
    serial = ":".join(serial[i:i + 2] for i in range(0, len(serial), 2)).lower()
    return PeerCert(uri, serial, info.get("notAfter", ""))


def _load_chain(ctx: ssl.SSLContext, cert_pem: str, key_pem: str) -> None:
    """load_cert_chain wants a path: hand it an anonymous memory file, never the disk."""
    fd = os.memfd_create("yurt-leaf", os.MFD_CLOEXEC)
    try:
        os.write(fd, (cert_pem.strip() + "\n" + key_pem.strip() + "\n").encode())
        ctx.load_cert_chain(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


def _base(purpose: int, cert_pem: str, key_pem: str, roots_pem: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(purpose)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.options |= ssl.OP_NO_COMPRESSION | _IGNORE_EOF
    ctx.load_verify_locations(cadata=roots_pem)
    _load_chain(ctx, cert_pem, key_pem)
    return ctx


@dataclass
class TLSMaterial:
    """One generation of identity: the leaf, the roots, and the two contexts made from them."""
    trust_domain: str
    service: str
    serial: str
    server: ssl.SSLContext
    client: ssl.SSLContext
    valid_before: str = ""
    # TLS session resumption between sidecars (resume.py): a ticket from each upstream instance,
    # made with `client` (a session only resumes with the context that made it, so a new
    # generation starts with none; the server's ticket keys die with its context the same way)
    sessions: dict = field(default_factory=dict)


def build_material(trust_domain: str, service: str, cert_pem: str, key_pem: str, roots_pem: str,
                   serial: str = "", valid_before: str = "") -> TLSMaterial:
    server = _base(ssl.PROTOCOL_TLS_SERVER, cert_pem, key_pem, roots_pem)
    # one session ticket per handshake: a sidecar that connects again resumes (no certificate
    # signature or chain check on either side; still a fresh ECDHE key exchange, psk_dhe_ke).
    # The tickets' keys live in this context, so a rotated leaf or root set ends resumption.
    server.num_tickets = 1
    client = _base(ssl.PROTOCOL_TLS_CLIENT, cert_pem, key_pem, roots_pem)
    m = TLSMaterial(trust_domain.lower(), service, serial, server, client, valid_before)
    self_check(m)
    return m


def self_check(m: TLSMaterial) -> None:
    """Handshake the two contexts with each other in memory: proves the leaf matches its key and
    chains to the roots before we announce readiness. Raises ssl.SSLError otherwise."""
    if handshake_in_memory(m.client, m.server) is None:
        raise ssl.SSLError("leaf self-check did not complete")


def handshake_in_memory(client: ssl.SSLContext, server: ssl.SSLContext,
                        before: Callable[[ssl.SSLObject], None] | None = None) -> ssl.SSLObject | None:
    """A TLS handshake between two contexts over memory BIOs, the client's post-handshake
    messages (its session ticket) read in; the client's SSLObject, or None if it did not
    complete. `before(client)` runs before the first flight (resume.py offers a session there)."""
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    cli = client.wrap_bio(c_in, c_out, server_side=False)
    srv = server.wrap_bio(s_in, s_out, server_side=True)
    if before is not None:
        before(cli)
    done_c = done_s = False
    for _ in range(10):
        if not done_c:
            try:
                cli.do_handshake()
                done_c = True
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        if not done_s:
            try:
                srv.do_handshake()
                done_s = True
            except ssl.SSLWantReadError:
                pass
        c_in.write(s_out.read())
        if done_c and done_s:
            try:
                cli.read(1)   # takes in what the server sent after the handshake (a ticket)
            except ssl.SSLWantReadError:
                pass
            return cli
    return None


def roots_bundle(roots_json: dict) -> str:
    """Consul's CA roots JSON → PEM bundle: every root (active or rotated out) as a trust anchor,
    plus their intermediates (OpenSSL still needs a self-signed anchor at the end of a chain;
    the intermediates only help when a peer does not send its full chain)."""
    pems = []
    for r in roots_json.get("Roots") or []:
        if r.get("RootCert"):
            pems.append(r["RootCert"].strip())
        pems.extend(i.strip() for i in r.get("IntermediateCerts") or [] if i)
    return "\n".join(pems) + "\n"


def ssl_reason(e: BaseException) -> str:
    """A short, useful reason: the verify message when chain verification failed
    ("certificate has expired", "unable to get local issuer certificate"), else OpenSSL's reason."""
    msg = getattr(e, "verify_message", None)
    if msg:
        return f"certificate verify failed: {msg}"
    if isinstance(e, ssl.SSLError):
        return str(e.reason or e).lower().replace("_", " ")
    if isinstance(e, OSError):
        return e.strerror or str(e) or type(e).__name__
    return str(e)
