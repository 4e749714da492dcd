"""`yurt tls ca create` and `yurt tls cert create`: a cluster CA and agent/CLI certificates for
HTTPS on the agents' API, as Nomad's `nomad tls` makes them (same flags and file names, with
"yurt" where Nomad writes "nomad": yurt-agent-ca.pem, global-server-yurt.pem, ...).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path

import click
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .output import fail
from .format import echo as out


@click.group("tls")
def tls_group() -> None:
    """Make the certificates that secure the agents' HTTP API (as `nomad tls`)."""


@tls_group.group("ca")
def ca_group() -> None:
    """The cluster's certificate authority."""


@tls_group.group("cert")
def cert_group() -> None:
    """Certificates for servers, clients and the CLI, signed by the CA."""


def _write(path: Path, data: bytes, secret: bool) -> None:
    """Create `path` (never overwrite it); keys get mode 0600 from the start."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if secret else 0o644)
    except FileExistsError:
        fail(f"{path} already exists: move it away or run this in another directory")
    except OSError as e:
        fail(f"cannot write {path}: {e.strerror}")
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@ca_group.command("create")
@click.option("-domain", "--domain", default="yurt", show_default=True,
              help="The cluster's domain (Nomad's is \"nomad\"); the files are named after it.")
@click.option("-days", "--days", default=1825, show_default=True, type=click.IntRange(1, 36500),
              help="How long the CA certificate is valid.")
@click.option("-common-name", "--common-name", default="", help="The CA's common name.")
def ca_create(domain: str, days: int, common_name: str) -> None:
    """Create <domain>-agent-ca.pem and <domain>-agent-ca-key.pem in the current directory
    (Nomad writes nomad-agent-ca.pem; this mirrors it with "yurt")."""
    if not domain or "/" in domain:
        fail(f'-domain "{domain}" is not a domain name')
    cert_path, key_path = Path(f"{domain}-agent-ca.pem"), Path(f"{domain}-agent-ca-key.pem")
    for p in (cert_path, key_path):
        if p.exists():
            fail(f"{p} already exists: move it away or run this in another directory")
    key = ec.generate_private_key(ec.SECP256R1())
    serial = x509.random_serial_number()
    name = x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, common_name or f"Yurt Agent CA {serial}"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Yurt")])
    now = datetime.datetime.now(datetime.UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(serial).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(ski, critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
            .sign(key, hashes.SHA256()))
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), secret=False)
    _write(key_path, _key_pem(key), secret=True)
    out(f"==> CA certificate saved to: {cert_path}")
    out(f"==> CA certificate key saved to: {key_path}")


@cert_group.command("create")
@click.option("-server", "--server", "kind", flag_value="server", help="A server agent's certificate.")
@click.option("-client", "--client", "kind", flag_value="client", help="A client agent's certificate.")
@click.option("-cli", "--cli", "kind", flag_value="cli", help="A certificate for the CLI (client auth only).")
@click.option("-region", "--region", default="global", show_default=True, help="The agent's region.")
@click.option("-domain", "--domain", default="yurt", show_default=True, help="The cluster's domain.")
@click.option("-days", "--days", default=365, show_default=True, type=click.IntRange(1, 36500),
              help="How long the certificate is valid.")
@click.option("-ca", "--ca", "ca_file", default="", metavar="FILE",
              help="The CA certificate (default <domain>-agent-ca.pem).")
@click.option("-key", "--key", "key_file", default="", metavar="FILE",
              help="The CA's key (default <domain>-agent-ca-key.pem).")
@click.option("-additional-dnsname", "--additional-dnsname", "dnsnames", multiple=True, metavar="NAME",
              help="Another DNS name the certificate holds (repeatable).")
@click.option("-additional-ipaddress", "--additional-ipaddress", "ips", multiple=True, metavar="IP",
              help="Another IP address the certificate holds (repeatable).")
def cert_create(kind: str | None, region: str, domain: str, days: int, ca_file: str, key_file: str,
                dnsnames: tuple[str, ...], ips: tuple[str, ...]) -> None:
    """Create <region>-<server|client|cli>-<domain>.pem and its -key.pem, signed by the CA, with
    the names Nomad gives them: <kind>.<region>.<domain>, localhost and 127.0.0.1."""
    if kind is None:
        fail("say which certificate: -server, -client or -cli")
    assert kind is not None
    ca_path = Path(ca_file or f"{domain}-agent-ca.pem")
    ca_key_path = Path(key_file or f"{domain}-agent-ca-key.pem")
    try:
        ca_cert = x509.load_pem_x509_certificate(ca_path.read_bytes())
    except OSError as e:
        fail(f"cannot read the CA certificate {ca_path} (-ca): {e.strerror}; make one with `yurt tls ca create`")
    except ValueError as e:
        fail(f"{ca_path} (-ca) is not a PEM certificate: {e}")
    try:
        ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
    except OSError as e:
        fail(f"cannot read the CA key {ca_key_path} (-key): {e.strerror}")
    except (ValueError, TypeError) as e:
        fail(f"{ca_key_path} (-key) is not an unencrypted PEM private key: {e}")
    ca_public = ca_cert.public_key()
    if not isinstance(ca_key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)) or \
            not isinstance(ca_public, (ec.EllipticCurvePublicKey, rsa.RSAPublicKey)):
        fail(f"{ca_key_path} (-key): only EC and RSA CA keys are supported")
    assert isinstance(ca_key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey))
    assert isinstance(ca_public, (ec.EllipticCurvePublicKey, rsa.RSAPublicKey))
    if ca_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo) \
            != ca_cert.public_key().public_bytes(serialization.Encoding.PEM,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo):
        fail(f"{ca_key_path} (-key) is not the key of the CA certificate {ca_path} (-ca)")
    addresses: list[x509.IPAddress] = [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    for ip in ips:
        try:
            addresses.append(x509.IPAddress(ipaddress.ip_address(ip)))
        except ValueError:
            fail(f'-additional-ipaddress "{ip}" is not an IP address')
    names = [f"{kind}.{region}.{domain}", "localhost", *dnsnames]
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH] if kind == "cli" else [ExtendedKeyUsageOID.SERVER_AUTH,
                                                                      ExtendedKeyUsageOID.CLIENT_AUTH]
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(min(now + datetime.timedelta(days=days), ca_cert.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=True,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.SubjectAlternativeName([*(x509.DNSName(n) for n in dict.fromkeys(names)),
                                                        *addresses]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_public),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    base = f"{region}-{kind}-{domain}"
    cert_path, key_path = Path(f"{base}.pem"), Path(f"{base}-key.pem")
    for p in (cert_path, key_path):
        if p.exists():
            fail(f"{p} already exists: move it away or run this in another directory")
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), secret=False)
    _write(key_path, _key_pem(key), secret=True)
    label = {"server": "Server", "client": "Client", "cli": "Cli"}[kind]
    out(f"==> Using CA file {ca_path} and CA key {ca_key_path}")
    out(f"==> {label} Certificate saved to {cert_path}")
    out(f"==> {label} Certificate key saved to {key_path}")
