"""The X.509 work of the Connect CA, with `cryptography`: keys, the root, cross-signing, CSRs and
leaf certificates. Pure functions of their inputs (time is passed in)."""

from __future__ import annotations

import datetime as dt
import hashlib

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from yurt.errors import InvalidInput

CROSS_SIGN_VALIDITY = dt.timedelta(days=7)   # Consul's: leaves live at most days
SKEW = dt.timedelta(minutes=1)               # NotBefore backdating for clock skew


class CSRError(InvalidInput):
    """A certificate signing request the CA refuses; the message says why."""


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def load_key(pem: str) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"a {type(key).__name__.removeprefix('_')} key, not an EC key: the CA signs with EC P-256")
    return key


def cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def load_cert(pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode())


def load_certs(pem: str) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(pem.encode())


def key_id(public_key: CertificatePublicKeyTypes) -> bytes:
    """SubjectKeyId: SHA-256 of the DER public key (as newer Consul)."""
    der = public_key.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).digest()


def colon_hex(data: bytes) -> str:
    return ":".join(f"{b:02x}" for b in data)


def serial_hex(serial: int) -> str:
    return colon_hex(serial.to_bytes(max(1, (serial.bit_length() + 7) // 8), "big"))


def fingerprint(cert: x509.Certificate) -> str:
    """A root's ID: the SHA-1 fingerprint of its DER form, colon-hex."""
    return colon_hex(cert.fingerprint(hashes.SHA1()))


def rfc3339(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _ca_extensions(builder: x509.CertificateBuilder, public_key: CertificatePublicKeyTypes, issuer_key_id: bytes,
                   uri: str) -> x509.CertificateBuilder:
    return (builder
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=True, crl_sign=True,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier(key_id(public_key)), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier(issuer_key_id, None, None), critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]),
                           critical=False))


def make_root(key: ec.EllipticCurvePrivateKey, common_name: str, signing_uri: str, serial: int,
              now: dt.datetime, ttl: dt.timedelta) -> x509.Certificate:
    """A self-signed root: CA=true, CertSign|CRLSign|DigitalSignature, URI SAN = the trust domain."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
               .public_key(key.public_key()).serial_number(serial)
               .not_valid_before(now).not_valid_after(now + ttl))
    builder = _ca_extensions(builder, key.public_key(), key_id(key.public_key()), signing_uri)
    return builder.sign(key, hashes.SHA256())


def cross_sign(new_root: x509.Certificate, old_root: x509.Certificate,
               old_key: ec.EllipticCurvePrivateKey, serial: int, now: dt.datetime) -> x509.Certificate:
    """The old root vouches for the new root's key: same subject, key and SANs as the new root,
    issued by the old root, valid 7 days. Peers that trust only the old root can then verify
    leaves of the new one when this certificate travels with them."""
    uri = new_root.extensions.get_extension_for_class(x509.SubjectAlternativeName).value \
        .get_values_for_type(x509.UniformResourceIdentifier)[0]
    builder = (x509.CertificateBuilder().subject_name(new_root.subject).issuer_name(old_root.subject)
               .public_key(new_root.public_key()).serial_number(serial)
               .not_valid_before(now - SKEW).not_valid_after(now + CROSS_SIGN_VALIDITY))
    builder = _ca_extensions(builder, new_root.public_key(), key_id(old_key.public_key()), uri)
    return builder.sign(old_key, hashes.SHA256())


def make_csr(key: ec.EllipticCurvePrivateKey, uri: str, dns_names: tuple[str, ...] = ()) -> str:
    """A CSR with one URI SAN (the SPIFFE ID), as an agent makes for a service."""
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uri)]
    sans += [x509.DNSName(d) for d in dns_names]
    csr = (x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
           .add_extension(x509.SubjectAlternativeName(sans), critical=False)
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def csr_uris(csr_pem: str) -> tuple[x509.CertificateSigningRequest, list[str]]:
    try:
        csr = x509.load_pem_x509_csr(csr_pem.encode())
    except ValueError as e:
        raise CSRError(f"the CSR is not a PEM certificate request: {e}") from None
    if not csr.is_signature_valid:
        raise CSRError("the CSR's signature does not verify")
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise CSRError("the CSR has no subject alternative names: it needs one SPIFFE URI") from None
    if san.get_values_for_type(x509.RFC822Name):
        raise CSRError("the CSR has email SANs; only one SPIFFE URI is allowed")
    return csr, san.get_values_for_type(x509.UniformResourceIdentifier)


def sign_leaf(csr: x509.CertificateSigningRequest, ca_cert: x509.Certificate,
              ca_key: ec.EllipticCurvePrivateKey, serial: int, now: dt.datetime,
              ttl: dt.timedelta, common_name: str) -> x509.Certificate:
    """A leaf for a service: CA=false, DigitalSignature|KeyEncipherment|KeyAgreement, server and
    client auth, NotBefore now-1min, NotAfter NotBefore+TTL, SANs copied from the CSR."""
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    not_before = now - SKEW
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
               .issuer_name(ca_cert.subject).public_key(csr.public_key()).serial_number(serial)
               .not_valid_before(not_before).not_valid_after(not_before + ttl)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                            key_encipherment=True, data_encipherment=False,
                                            key_agreement=True, key_cert_sign=False, crl_sign=False,
                                            encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                     ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
               .add_extension(x509.SubjectKeyIdentifier(key_id(csr.public_key())), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier(key_id(ca_cert.public_key()), None, None),
                              critical=False)
               .add_extension(san, critical=False))
    return builder.sign(ca_key, hashes.SHA256())
