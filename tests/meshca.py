"""A Connect-shaped CA in the tests (EC P-256, SPIFFE URI SANs), with `cryptography`: for
certificates a real agent would never issue (another CA's, expired ones, a foreign trust domain)
and for the fake agent of the lean client's tests. Not part of the product.

    ca = TestCA("11111111-2222.yurt")
    issued = ca.leaf("web")                 # Consul IssuedCert JSON shape
    ca.roots_json()                         # Consul CA roots JSON shape
    new = TestCA(ca.trust_domain); x = ca.cross_sign(new)   # rotation
    TestCA.adopt(root_pem, private_key_pem, td)  # sign as an existing root, e.g. an agent's CA
                                            # given this key (PUT /v1/connect/ca/configuration)
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import itertools

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_USAGE = x509.KeyUsage(False, False, False, False, False, True, True, False, False)  # cert + CRL sign
LEAF_USAGE = x509.KeyUsage(True, False, True, True, True, False, False, False, False)  # TLS
LEAF_EKU = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])

_serials = itertools.count(100)


def self_signed() -> tuple[bytes, bytes]:
    """A self-signed server certificate for 127.0.0.1 and its key, PEM: (cert, key)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def colon_hex(n: int) -> str:
    h = f"{n:x}"
    h = ("0" + h) if len(h) % 2 else h
    return ":".join(h[i:i + 2] for i in range(0, len(h), 2))


class TestCA:
    __test__ = False  # not a pytest class

    def __init__(self, trust_domain: str = "11111111-2222-3333-4444-555555555555.yurt",
                 name: str = "Yurt CA", datacenter: str = "dc1") -> None:
        self.trust_domain = trust_domain
        self.datacenter = datacenter
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} {next(_serials)}")])
        now = _now()
        self.cert = (x509.CertificateBuilder().subject_name(self.name).issuer_name(self.name)
                     .public_key(self.key.public_key()).serial_number(next(_serials))
                     .not_valid_before(now - dt.timedelta(minutes=1))
                     .not_valid_after(now + dt.timedelta(days=3650))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .add_extension(CA_USAGE, critical=True)
                     .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
                     .sign(self.key, hashes.SHA256()))
        self.intermediates: list[x509.Certificate] = []  # sent with every leaf (cross-signed roots)
        self.root_pem = pem(self.cert)

    @classmethod
    def adopt(cls, root_pem: str, private_key_pem: str, trust_domain: str, datacenter: str = "dc1") -> TestCA:
        """Sign as an existing root (its certificate and private key), e.g. the root a real agent
        made for a key given to it: leaves from here chain to that agent's trusted root."""
        ca = cls.__new__(cls)
        ca.trust_domain, ca.datacenter = trust_domain, datacenter
        ca.key = serialization.load_pem_private_key(private_key_pem.encode(), None)
        ca.cert = x509.load_pem_x509_certificate(root_pem.encode())
        ca.name = ca.cert.subject
        ca.intermediates = []
        ca.root_pem = pem(ca.cert)
        return ca

    def authority_key_id(self) -> x509.AuthorityKeyIdentifier:
        """What certificates this CA signs name as their issuer's key: the root's own
        SubjectKeyIdentifier (an adopted root may compute it otherwise than SHA-1)."""
        try:
            ski = self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        except x509.ExtensionNotFound:
            return x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key())
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)

    def uri(self, service: str, datacenter: str | None = None) -> str:
        return f"spiffe://{self.trust_domain}/ns/default/dc/{datacenter or self.datacenter}/svc/{service}"

    def leaf(self, service: str, *, datacenter: str | None = None, uri: str | None = None,
             ttl: dt.timedelta = dt.timedelta(hours=72), not_before: dt.datetime | None = None,
             serial: int | None = None) -> dict:
        """A leaf for `service` (or any `uri`) as Consul's IssuedCert JSON."""
        key = ec.generate_private_key(ec.SECP256R1())
        nb = not_before or (_now() - dt.timedelta(minutes=1))
        serial = serial or next(_serials)
        uri = uri or self.uri(service, datacenter)
        cert = (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(self.name)
                .public_key(key.public_key()).serial_number(serial)
                .not_valid_before(nb).not_valid_after(nb + ttl)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(LEAF_USAGE, critical=True)
                .add_extension(LEAF_EKU, critical=False)
                .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=True)
                .add_extension(self.authority_key_id(), critical=False)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                .sign(self.key, hashes.SHA256()))
        chain = pem(cert) + "".join(pem(i) for i in self.intermediates)
        return {"SerialNumber": colon_hex(serial), "CertPEM": chain, "PrivateKeyPEM": key_pem(key),
                "Service": service, "ServiceURI": uri,
                "ValidAfter": nb.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "ValidBefore": (nb + ttl).strftime("%Y-%m-%dT%H:%M:%SZ"), "ModifyIndex": serial}

    def cross_sign(self, new: TestCA) -> x509.Certificate:
        """The old CA (self) signs the new root's key and name, as Consul does on rotation; the
        result is added to the new CA's intermediates so its leaves chain to the old root too."""
        now = _now()
        x = (x509.CertificateBuilder().subject_name(new.name).issuer_name(self.name)
             .public_key(new.key.public_key()).serial_number(next(_serials))
             .not_valid_before(now - dt.timedelta(minutes=1)).not_valid_after(now + dt.timedelta(days=7))
             .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
             .add_extension(CA_USAGE, critical=True)
             .add_extension(x509.SubjectKeyIdentifier.from_public_key(new.key.public_key()), critical=False)
             .add_extension(self.authority_key_id(), critical=False)
             .sign(self.key, hashes.SHA256()))
        new.intermediates.insert(0, x)
        return x

    def roots_json(self, *others: TestCA) -> dict:
        """Roots JSON with this CA active and `others` as rotated-out roots."""
        roots = [{"ID": f"root-{i}", "Name": "rotated", "RootCert": o.root_pem, "Active": False,
                  "IntermediateCerts": None} for i, o in enumerate(others)]
        roots.append({"ID": "active", "Name": "active", "RootCert": self.root_pem, "Active": True,
                      "IntermediateCerts": [pem(i) for i in self.intermediates] or None})
        return {"TrustDomain": self.trust_domain, "ActiveRootID": "active", "Roots": roots}
