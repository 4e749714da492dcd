"""The Connect CA with real X.509: root and leaf fields, CSR checks, rotation with cross-signing,
pruning (time driven by an injected clock), persistence, and a real mTLS handshake through the
cross-signed chain."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import threading

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store

from yurt.server import ca_x509 as x
from yurt.server.ca import CAError, ConnectCA
from yurt.state import StateStore


class Clock:
    def __init__(self) -> None:
        self.t = dt.datetime.now(dt.UTC).timestamp()

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture
def store():
    s = StateStore.temporary()
    yield s
    s.close()


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def ca(store, clock):
    c = ConnectCA(store, "dc1", clock=clock)
    c.bootstrap()
    return c


def csr_for(ca: ConnectCA, service: str, *, td: str | None = None, dc: str = "dc1", extra_uri: str = ""):
    key = x.new_key()
    uri = f"spiffe://{td or ca.trust_domain}/ns/default/dc/{dc}/svc/{service}"
    sans = [x509.UniformResourceIdentifier(uri)] + ([x509.UniformResourceIdentifier(extra_uri)] if extra_uri else [])
    from cryptography.hazmat.primitives import hashes, serialization
    csr = (x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
           .add_extension(x509.SubjectAlternativeName(sans), critical=False).sign(key, hashes.SHA256()))
    return key, csr.public_bytes(serialization.Encoding.PEM).decode()


def root_cert(ca: ConnectCA, i: int = 0) -> x509.Certificate:
    return x.load_cert(ca.state().roots[i].root_cert)


def test_root_certificate_fields(ca):
    st = ca.state()
    assert st.trust_domain == f"{st.cluster_id}.yurt"
    (root,) = st.roots
    cert = x.load_cert(root.root_cert)
    assert root.active and st.active_root_id == root.id == x.fingerprint(cert)
    assert cert.subject == cert.issuer
    cn = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
    assert cn.startswith("pri-") and cn.endswith(f".yurt.ca.{st.cluster_id[:8]}.yurt")
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign and ku.digital_signature
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [f"spiffe://{st.trust_domain}"]
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    assert ski == aki and root.signing_key_id == x.colon_hex(ski)
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert life == dt.timedelta(hours=87600)
    assert isinstance(cert.public_key().curve, type(x.new_key().curve))
    assert "PrivateKey" not in ca.roots()["Roots"][0]


def test_leaf_is_signed_for_the_service(ca, clock):
    key, csr = csr_for(ca, "web")
    issued = ca.sign(csr, "web")
    leaf, *rest = x.load_certs(issued.cert_pem)
    assert rest == []  # no intermediates before a rotation
    leaf.verify_directly_issued_by(root_cert(ca))
    assert leaf.public_key().public_numbers() == key.public_key().public_numbers()
    uri = f"spiffe://{ca.trust_domain}/ns/default/dc/dc1/svc/web"
    assert issued.service_uri == uri and issued.service == "web"
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [uri]
    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    ku = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature and ku.key_encipherment and ku.key_agreement and not ku.key_cert_sign
    now = dt.datetime.fromtimestamp(clock(), dt.UTC).replace(microsecond=0)
    assert leaf.not_valid_before_utc == now - dt.timedelta(minutes=1)
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == dt.timedelta(hours=72)
    assert issued.serial_number == x.serial_hex(leaf.serial_number)
    # the real verifier (RFC 5280 profile, client auth) accepts it
    PolicyBuilder().store(Store([root_cert(ca)])).time(now).build_client_verifier().verify(leaf, [])


def test_serials_increase(ca):
    a = x.load_certs(ca.sign(csr_for(ca, "web")[1]).cert_pem)[0].serial_number
    b = x.load_certs(ca.sign(csr_for(ca, "web")[1]).cert_pem)[0].serial_number
    assert b == a + 1


@pytest.mark.parametrize("kind", ["other trust domain", "other dc", "two URIs", "other service", "not spiffe"])
def test_bad_csrs_are_refused(ca, kind):
    if kind == "other trust domain":
        _, csr = csr_for(ca, "web", td="11111111-2222-3333-4444-555555555555.yurt")
        match = "trust domain"
    elif kind == "other dc":
        _, csr = csr_for(ca, "web", dc="dc2")
        match = "datacenter"
    elif kind == "two URIs":
        _, csr = csr_for(ca, "web", extra_uri="spiffe://x/ns/default/dc/dc1/svc/db")
        match = "exactly one URI"
    elif kind == "other service":
        _, csr = csr_for(ca, "db")
        match = 'not "web"'
    else:
        csr = x.make_csr(x.new_key(), "https://example.com/web")
        match = "not a service SPIFFE ID"
    with pytest.raises(CAError, match=match):
        ca.sign(csr, "web")


def test_leaf_ttl_is_configurable_down_to_minutes(ca):
    ca.set_configuration({"Provider": "consul", "Config": {"LeafCertTTL": "2m"}})
    leaf = x.load_certs(ca.sign(csr_for(ca, "web")[1]).cert_pem)[0]
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == dt.timedelta(minutes=2)
    assert len(ca.state().roots) == 1  # a TTL change does not rotate
    with pytest.raises(CAError, match="between 1m"):
        ca.set_configuration({"Config": {"LeafCertTTL": "30s"}})
    with pytest.raises(CAError, match="unknown CA provider"):
        ca.set_configuration({"Provider": "vault", "Config": {}})


def test_rotation_cross_signs_and_old_root_verifies_new_leaves(ca, clock):
    old_root = root_cert(ca)
    old_id = ca.state().active_root_id
    ca.set_configuration({"Config": {"ForceRotation": True}})
    st = ca.state()
    assert st.active_root_id != old_id and len(st.roots) == 2
    old, new = st.roots
    assert (old.active, new.active) == (False, True)
    assert old.rotated_out_at and old.rotated_out_ns == int(clock() * 1e9)
    (xsigned_pem,) = new.intermediate_certs
    xsigned = x.load_cert(xsigned_pem)
    new_root = x.load_cert(new.root_cert)
    assert xsigned.public_key().public_numbers() == new_root.public_key().public_numbers()
    assert xsigned.issuer == old_root.subject
    assert xsigned.not_valid_after_utc - xsigned.not_valid_before_utc == dt.timedelta(days=7, minutes=1)

    issued = ca.sign(csr_for(ca, "web")[1])
    leaf, chain_xsigned = x.load_certs(issued.cert_pem)  # leaf + the cross-signed root
    leaf.verify_directly_issued_by(new_root)
    chain_xsigned.verify_directly_issued_by(old_root)
    now = dt.datetime.fromtimestamp(clock(), dt.UTC)
    # a peer that still trusts only the OLD root accepts the new leaf through the chain
    PolicyBuilder().store(Store([old_root])).time(now).build_client_verifier().verify(leaf, [chain_xsigned])
    # and one that has the new root too
    PolicyBuilder().store(Store([new_root])).time(now).build_client_verifier().verify(leaf, [])


def test_rotation_with_a_given_private_key(ca):
    key = x.new_key()
    ca.set_configuration({"Config": {"PrivateKey": x.key_pem(key)}})
    new = x.load_cert(ca.state().active_root().root_cert)
    assert new.public_key().public_numbers() == key.public_key().public_numbers()


def test_old_root_is_pruned_after_twice_the_leaf_ttl(ca, clock):
    ca.set_configuration({"Config": {"LeafCertTTL": "1h"}})
    ca.rotate()
    assert len(ca.prune().roots) == 2
    clock.advance(2 * 3600 - 1)
    assert len(ca.prune().roots) == 2   # still trusted: leaves of the old root may be alive
    clock.advance(2)
    st = ca.prune()
    assert [r.active for r in st.roots] == [True]
    assert st.roots[0].id == st.active_root_id


def test_the_ca_survives_a_restart(tmp_path, clock):
    path = str(tmp_path / "state.db")
    with StateStore(path) as s:
        st = ConnectCA(s, clock=clock).bootstrap()
        serial = s.ca_serial()
    with StateStore(path) as s:
        again = ConnectCA(s, clock=clock, leaf_cert_ttl="5m").bootstrap()
        assert (again.trust_domain, again.active_root_id) == (st.trust_domain, st.active_root_id)
        assert again.roots[0].private_key == st.roots[0].private_key
        assert again.config.leaf_cert_ttl == "5m"   # the agent flag applies on restart
        assert s.ca_serial() == serial


def test_mtls_handshake_with_a_rotated_chain_and_the_old_root(ca, tmp_path):
    """What a sidecar does with OpenSSL: the server presents leaf + cross-signed root; a client
    that trusts only the old root accepts it, and the client's new leaf is accepted back."""
    old_root_pem = ca.state().roots[0].root_cert
    ca.rotate()

    def files(name: str):
        key, csr = csr_for(ca, name)
        issued = ca.sign(csr)
        cert_path, key_path = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
        cert_path.write_text(issued.cert_pem)
        key_path.write_text(x.key_pem(key))
        return str(cert_path), str(key_path)

    ca_file = tmp_path / "old-root.pem"
    ca_file.write_text(old_root_pem)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(*files("db"))
    server_ctx.load_verify_locations(str(ca_file))
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.check_hostname = False
    client_ctx.load_cert_chain(*files("web"))
    client_ctx.load_verify_locations(str(ca_file))

    listener = socket.create_server(("127.0.0.1", 0))
    seen = {}

    def serve():
        conn, _ = listener.accept()
        with server_ctx.wrap_socket(conn, server_side=True) as tls:
            seen["client"] = tls.getpeercert()["subjectAltName"]
            tls.sendall(b"ok")

    t = threading.Thread(target=serve)
    t.start()
    with socket.create_connection(listener.getsockname()) as raw:
        with client_ctx.wrap_socket(raw) as tls:
            peer = tls.getpeercert()["subjectAltName"]
            assert tls.recv(2) == b"ok"
    t.join(10)
    listener.close()
    assert peer == (("URI", f"spiffe://{ca.trust_domain}/ns/default/dc/dc1/svc/db"),)
    assert seen["client"] == (("URI", f"spiffe://{ca.trust_domain}/ns/default/dc/dc1/svc/web"),)
