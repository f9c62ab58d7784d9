"""A throw-away PKI for the broker security tests, shaped like production (docs/broker.md).

Two CAs, because the broker has two listeners and each must accept only its own clients:

    box CA      signs the broker's certificate and one client certificate per school
                (CN = site id); the boxes trust it to check the broker
    centre CA   signs the centre's client certificates (CN = centre) and nothing else

plus a second broker certificate for a name the boxes do not connect to (`evil.example`), signed
by the same box CA: a valid chain with the wrong name, which only the hostname check catches.

EC P-256 keys, so building all of it takes milliseconds; the test module caches one per session.
Keys are written 0600 as mosquitto and the agent's config check want them.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SITES = ("school-a", "school-b")
CENTRE = "centre"


@dataclass(frozen=True)
class Identity:
    """One certificate and its key, as PEM files."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    dir: Path
    box_ca: Path  # what the boxes and the centre trust for the broker; the box listener's cafile
    centre_ca: Path  # the centre listener's cafile
    server: Identity  # localhost, 127.0.0.1
    evil_server: Identity  # evil.example: valid chain, wrong name
    clients: dict[str, Identity]  # by CN: the sites and the centre

    def client(self, cn: str) -> Identity:
        return self.clients[cn]


@dataclass(frozen=True)
class _Ca:
    name: x509.Name
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate


def make_pki(directory: Path) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    box_ca = _make_ca("Test box CA")
    centre_ca = _make_ca("Test centre CA")
    server = _issue(
        directory,
        "server",
        box_ca,
        "localhost",
        server=True,
        sans=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    evil = _issue(
        directory,
        "evil-server",
        box_ca,
        "evil.example",
        server=True,
        sans=[x509.DNSName("evil.example")],
    )
    clients = {site: _issue(directory, site, box_ca, site) for site in SITES}
    clients[CENTRE] = _issue(directory, CENTRE, centre_ca, CENTRE)
    return Pki(
        directory,
        _write_cert(directory / "box-ca.crt", box_ca.cert),
        _write_cert(directory / "centre-ca.crt", centre_ca.cert),
        server,
        evil,
        clients,
    )


def _validity(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return builder.not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(
        now + dt.timedelta(days=2)
    )


def _make_ca(common_name: str) -> _Ca:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        _validity(x509.CertificateBuilder())
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return _Ca(name, key, cert)


def _issue(
    directory: Path,
    stem: str,
    ca: _Ca,
    common_name: str,
    *,
    server: bool = False,
    sans: list[x509.GeneralName] | None = None,
) -> Identity:
    key = ec.generate_private_key(ec.SECP256R1())
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        _validity(x509.CertificateBuilder())
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca.key, hashes.SHA256())
    key_path = directory / f"{stem}.key"
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return Identity(_write_cert(directory / f"{stem}.crt", cert), key_path)


def _write_cert(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path
