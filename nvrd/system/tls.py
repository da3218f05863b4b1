"""The HTTPS server certificate: made at first start, reloaded on SIGHUP.

The self-signed certificate uses ECDSA P-256: every TLS 1.2+ client supports it, and
making the key costs milliseconds, where RSA 3072 costs seconds on a slow appliance
CPU (and many more under emulation in the appliance tests).
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from nvrd.system.network import IPAddress

log = logging.getLogger(__name__)

# Forward secrecy and AEAD only (Mozilla "intermediate"); TLS 1.3 suites are fixed
# by OpenSSL and all good.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
VALIDITY = datetime.timedelta(days=3650)


@dataclass(frozen=True)
class CertificatePaths:
    certificate: Path
    key: Path

    @classmethod
    def in_dir(cls, directory: Path) -> CertificatePaths:
        return cls(directory / "server.crt", directory / "server.key")

    def exist(self) -> bool:
        return self.certificate.is_file() and self.key.is_file()


def make_self_signed(hostname: str, addresses: list[IPAddress]) -> tuple[bytes, bytes]:
    """A self-signed server certificate and its key, both PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    dns_names = list(dict.fromkeys([hostname, "localhost"]))
    san: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    san += [x509.IPAddress(a) for a in addresses]
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return certificate.public_bytes(serialization.Encoding.PEM), key_pem


def ensure_certificate(
    paths: CertificatePaths, hostname: str, addresses: list[IPAddress]
) -> bool:
    """Make the self-signed certificate if there is none. True if one was made."""
    if paths.exist():
        return False
    certificate_pem, key_pem = make_self_signed(hostname, addresses)
    paths.key.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    _write_private(paths.key, key_pem)
    _write_private(paths.certificate, certificate_pem, mode=0o644)
    log.info(
        "made a self-signed HTTPS certificate for %s and %d addresses",
        hostname,
        len(addresses),
    )
    return True


def _write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    # Write beside and rename, so a crash never leaves half a key in place.
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def server_context(paths: CertificatePaths) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    context.load_cert_chain(paths.certificate, paths.key)
    return context


def reload(context: ssl.SSLContext, paths: CertificatePaths) -> None:
    """Load the certificate again into the live context: new connections use it."""
    context.load_cert_chain(paths.certificate, paths.key)


def certificate_addresses(pem: bytes) -> tuple[list[str], list[ipaddress._BaseAddress]]:
    """The DNS names and IP addresses in a certificate's SAN (for /status and tests)."""
    certificate = x509.load_pem_x509_certificate(pem)
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return san.get_values_for_type(x509.DNSName), san.get_values_for_type(x509.IPAddress)


class TlsService:
    """Owns the server certificate files and the live SSL context built from them."""

    def __init__(self, directory: Path, hostname: str) -> None:
        self.paths = CertificatePaths.in_dir(directory)
        self.hostname = hostname
        self._context: ssl.SSLContext | None = None

    def start(self) -> None:
        """Make the certificate if missing, then build the context. Blocking: run in
        a thread (key generation and netlink)."""
        from nvrd.system.network import local_addresses

        if not self.paths.exist():
            ensure_certificate(self.paths, self.hostname, local_addresses())
        self._context = server_context(self.paths)

    @property
    def context(self) -> ssl.SSLContext:
        if self._context is None:
            raise RuntimeError("TLS is not started")
        return self._context

    def reload(self) -> None:
        reload(self.context, self.paths)
