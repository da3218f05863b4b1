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
import threading
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from nvrd.errors import Conflict
from nvrd.system.certificates import CertificateInfo, CertificateStore
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
    """Owns the certificates and the live SSL context built from the active one.

    The listener keeps one context for its whole life; its SNI callback (which
    OpenSSL calls on every handshake, with or without a server name) hands each new
    connection the context of the active certificate. Activating a certificate
    builds a fresh context and swaps it in, so the change applies to the next
    handshake without a restart, and an RSA certificate never sits beside the old
    ECDSA one (loading a second key type into one context keeps both, and clients
    may still be served the old one).
    """

    def __init__(self, directory: Path, hostname: str) -> None:
        self.directory = directory
        self.paths = CertificatePaths.in_dir(directory)
        self.hostname = hostname
        self.store = CertificateStore(directory / "store", _write_private)
        self._active_file = directory / "active"
        self._listening: ssl.SSLContext | None = None
        self._active: ssl.SSLContext | None = None
        self._lock = threading.Lock()  # store changes run in threads

    def start(self) -> None:
        """Make the certificate if missing, then build the context. Blocking: run in
        a thread (key generation and netlink)."""
        from nvrd.system.network import local_addresses

        if not self.paths.exist():
            ensure_certificate(self.paths, self.hostname, local_addresses())
        self._adopt_first()
        self._active = server_context(self.paths)
        listening = server_context(self.paths)
        listening.sni_callback = self._select
        self._listening = listening

    def _adopt_first(self) -> None:
        """Put the certificate in use into the store, the first time, as "default"."""
        if self.store.ids() or not self.paths.exist():
            return
        folder = self.store.directory / "default"
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        _write_private(folder / "key.pem", self.paths.key.read_bytes())
        _write_private(folder / "certificate.pem", self.paths.certificate.read_bytes(), mode=0o644)
        _write_private(self._active_file, b"default\n", mode=0o644)

    def _select(self, connection: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> None:
        active = self._active
        if active is not None:
            connection.context = active

    @property
    def context(self) -> ssl.SSLContext:
        """The listener's context (give it to the site once)."""
        if self._listening is None:
            raise RuntimeError("TLS is not started")
        return self._listening

    @property
    def started(self) -> bool:
        return self._listening is not None

    def reload(self) -> None:
        """Build a context from the active files and swap it in (SIGHUP, activate).
        A broken pair raises and leaves the running context alone."""
        if self._listening is None:
            raise RuntimeError("TLS is not started")
        self._active = server_context(self.paths)

    # --- the store (blocking: call in a thread) -------------------------------------

    def active_id(self) -> str | None:
        try:
            return self._active_file.read_text().strip() or None
        except FileNotFoundError:
            return None

    def list(self) -> list[CertificateInfo]:
        return [self.store.get(i) for i in self.store.ids()]

    def activate(self, identifier: str) -> CertificateInfo:
        with self._lock:
            chain_pem, key_pem = self.store.files(identifier)
            self.paths.key.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            old = (self.paths.certificate.read_bytes(), self.paths.key.read_bytes()) if self.paths.exist() else None
            _write_private(self.paths.key, key_pem)
            _write_private(self.paths.certificate, chain_pem, mode=0o644)
            if self.started:
                try:
                    self.reload()
                except (OSError, ssl.SSLError):
                    if old is not None:  # put back what worked
                        _write_private(self.paths.certificate, old[0], mode=0o644)
                        _write_private(self.paths.key, old[1])
                    raise
            _write_private(self._active_file, identifier.encode() + b"\n", mode=0o644)
            log.info("HTTPS certificate %r is now active", identifier)
            return self.store.get(identifier)

    def delete(self, identifier: str) -> None:
        with self._lock:
            if identifier == self.active_id():
                raise Conflict(f"{identifier!r} is the active certificate; activate another first", id=identifier)
            self.store.delete(identifier)

    def make_self_signed(self, identifier: str, hostname: str | None) -> CertificateInfo:
        from nvrd.system.network import local_addresses

        certificate, key = make_self_signed(hostname or self.hostname, local_addresses())
        with self._lock:
            return self.store.add_self_signed(identifier, certificate, key)
