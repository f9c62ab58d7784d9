"""A throw-away PKI for the broker security tests, shaped like production (docs/broker.md).

Two CAs, because the broker has two listeners and each must accept only its own clients:

    box CA      signs the broker's certificate and one client certificate per school
                (CN = site id); the boxes trust it to check the broker
    centre CA   signs the centre's client certificates (CN = centre) and nothing else

plus a second broker certificate for a name the boxes do not connect to (`evil.example`), signed
by the same box CA: a valid chain with the wrong name, which only the hostname check catches.
Two more client certificates from the box CA model mistakes and losses: `school-c` is revoked in
the CRL (a stolen box), and `centre` signed by the box CA is a certificate the box CA should never
have issued.

EC P-256 keys, so building all of it takes milliseconds; the test module caches one per session.
Keys are written 0600 as mosquitto and the agent's config check want them.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SITES = ("school-a", "school-b", "school-c")
REVOKED = "school-c"
CENTRE = "centre"


@dataclass(frozen=True)
class Identity:
    """One certificate and its key, as PEM files."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class _Ca:
    name: x509.Name
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate


@dataclass(frozen=True)
class Pki:
    dir: Path
    box_ca: Path  # what the boxes and the centre trust for the broker; the box listener's cafile
    box_crl: Path  # the box CA's CRL: school-c revoked
    centre_ca: Path  # the centre listener's cafile
    server: Identity  # localhost, 127.0.0.1
    evil_server: Identity  # evil.example: valid chain, wrong name
    clients: dict[str, Identity]  # by CN: the sites and the centre (signed by the centre CA)
    misissued_centre: Identity  # CN centre, but signed by the box CA
    _box: _Ca = field(repr=False)

    def client(self, cn: str) -> Identity:
        return self.clients[cn]

    def site(self, site_id: str) -> Identity:
        """A box certificate for any site id, issued by the box CA on first use."""
        if site_id not in self.clients:
            self.clients[site_id] = _issue(self.dir, site_id, self._box, site_id)
        return self.clients[site_id]

    def write_crl(
        self, path: Path, revoked: tuple[str, ...] = (), *, expired: bool = False
    ) -> Path:
        """A CRL of the box CA revoking these site certificates; `expired`: nextUpdate passed."""
        now = dt.datetime.now(dt.UTC)
        last = now - dt.timedelta(days=2 if expired else 0, hours=1)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self._box.name)
            .last_update(last)
            .next_update(last + dt.timedelta(days=1))
        )
        for cn in revoked:
            cert = x509.load_pem_x509_certificate(self.clients[cn].cert.read_bytes())
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(cert.serial_number)
                .revocation_date(last)
                .build()
            )
        crl = builder.sign(self._box.key, hashes.SHA256())
        path.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
        return path


def make_pki(directory: Path) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    box_ca = _make_ca("Test box CA")
    centre_ca = _make_ca("Test centre CA")
    localhost = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    server = _issue(directory, "server", box_ca, "localhost", server=True, sans=localhost)
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
    pki = Pki(
        dir=directory,
        box_ca=_write_cert(directory / "box-ca.crt", box_ca.cert),
        box_crl=directory / "box-ca.crl",
        centre_ca=_write_cert(directory / "centre-ca.crt", centre_ca.cert),
        server=server,
        evil_server=evil,
        clients=clients,
        misissued_centre=_issue(directory, "misissued-centre", box_ca, CENTRE),
        _box=box_ca,
    )
    pki.write_crl(pki.box_crl, (REVOKED,))
    return pki


def _validity(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return builder.not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(
        now + dt.timedelta(days=2)
    )


KEY_USAGES = (
    "digital_signature",
    "content_commitment",
    "key_encipherment",
    "data_encipherment",
    "key_agreement",
    "key_cert_sign",
    "crl_sign",
    "encipher_only",
    "decipher_only",
)


def _key_usage(**granted: bool) -> x509.KeyUsage:
    """The usages ``granted``, every other one refused (cryptography wants each one named)."""
    return x509.KeyUsage(**{**dict.fromkeys(KEY_USAGES, False), **granted})


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
        .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
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
        .add_extension(_key_usage(digital_signature=True), critical=True)
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
