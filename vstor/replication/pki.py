"""A small certificate authority for the arrays of a replication pair (``vstor pki``).

``init_ca`` makes an ECDSA P-256 CA; ``issue`` gives one array a key and a certificate whose
common name is the array's identity, usable for both ends of a mutually authenticated TLS
connection. Keys are written mode 0600 with ``atomic_write``; nothing is overwritten.
``tls_context`` builds the ssl context both ends use: TLS 1.3 only, peer certificate
required and checked against the CA. Authorization (which identity may pair which group) is
the replication layer's job, on the verified common name.
"""

from __future__ import annotations

import datetime as dt
import os
import ssl
from typing import TYPE_CHECKING

from vstor.durable import atomic_write
from vstor.errors import AlreadyExists, NotFound, UsageError
from vstor.store.catalog.volumes import NAME_RE

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

CA_CERT, CA_KEY = "ca.pem", "ca.key"
# cryptography's x509 is imported by the functions that make certificates, not here: the daemon
# imports this module for tls_context, and x509 would add ~30 ms to every daemon start.


def _name(cn: str) -> x509.Name:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(path: str, data: bytes, private: bool) -> None:
    if os.path.exists(path):
        raise AlreadyExists(f"{path} already exists; remove it first to replace it")
    atomic_write(path, data, mode=0o600 if private else 0o644)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def init_ca(directory: str, days: int = 3650, now: dt.datetime | None = None) -> str:
    """Create the CA in ``directory`` (made if missing). Returns the CA certificate's path."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    now = now or dt.datetime.now(dt.UTC)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    for f in (CA_CERT, CA_KEY):
        if os.path.exists(os.path.join(directory, f)):
            raise AlreadyExists(f"{directory} already holds a CA ({f})")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name("vstor CA")).issuer_name(_name("vstor CA"))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .sign(key, hashes.SHA256()))
    _write(os.path.join(directory, CA_KEY), _key_pem(key), private=True)
    _write(os.path.join(directory, CA_CERT), cert.public_bytes(serialization.Encoding.PEM), private=False)
    return os.path.join(directory, CA_CERT)


def issue(directory: str, name: str, days: int = 825, now: dt.datetime | None = None) -> tuple[str, str]:
    """Key and certificate for array ``name``, signed by the CA in ``directory``. Returns the
    (certificate, key) paths: ``NAME.pem`` and ``NAME.key``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID

    if not NAME_RE.match(name or "") or name in ("ca",):
        raise UsageError(f"invalid array name {name!r}: use 1-64 letters, digits, '.', '_' or '-' (not 'ca')")
    try:
        with open(os.path.join(directory, CA_KEY), "rb") as f:
            ca_key = serialization.load_pem_private_key(f.read(), None)
        with open(os.path.join(directory, CA_CERT), "rb") as f:
            ca_cert = x509.load_pem_x509_certificate(f.read())
    except FileNotFoundError:
        raise NotFound(f"no CA in {directory}; create one with 'vstor pki init {directory}'") from None
    now = now or dt.datetime.now(dt.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))  # type: ignore[arg-type]
    cert_path, key_path = os.path.join(directory, f"{name}.pem"), os.path.join(directory, f"{name}.key")
    _write(key_path, _key_pem(key), private=True)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), private=False)
    return cert_path, key_path


def tls_context(directory: str, name: str, server: bool) -> ssl.SSLContext:
    """The context of array ``name``: its own certificate, and the CA as the only trust root.
    Both sides require and verify the other's certificate (mutual authentication)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.check_hostname = False  # peers are identified by certificate common name, checked by the caller
    cert, key, ca = (os.path.join(directory, f) for f in (f"{name}.pem", f"{name}.key", CA_CERT))
    for path in (cert, key, ca):  # ssl's FileNotFoundError does not say which file
        if not os.path.isfile(path):
            raise NotFound(f"missing TLS file {path}; issue one with 'vstor pki issue {name} --dir {directory}'")
    ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(ca)
    return ctx


def common_name(sock: ssl.SSLSocket) -> str | None:
    """The common name of the peer's verified certificate, or None without one."""
    cert = sock.getpeercert() or {}
    subject: tuple = cert.get("subject", ())  # type: ignore[assignment]  # typeshed's union of value types
    for rdn in subject:
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


def peer_name(sock: ssl.SSLSocket) -> str:
    """The verified common name of the peer of an established TLS connection."""
    name = common_name(sock)
    if name is None:
        raise UsageError("the peer presented no certificate common name")
    return name
