"""The device's HTTPS certificates: uploaded (PEM with its chain, or PKCS#12),
self-signed, or signed elsewhere from a CSR whose key never leaves the device.

Each lives in its own folder of the store (`<state>/tls/store/<id>/`:
certificate.pem with the chain after the leaf, key.pem mode 0600, csr.pem while a
CSR waits for its certificate). Activating one copies it to the files the listener
loads (`server.crt`, `server.key`); TlsService then swaps the live context.

Everything is checked before it is stored, with the reason when refused: the key
must match the leaf certificate, the leaf must be valid now, and OpenSSL must
accept the pair (loaded into a throwaway context).
"""

from __future__ import annotations

import datetime
import ipaddress
import re
import shutil
import ssl
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from nvrd.errors import Conflict, Invalid, NotFound
from nvrd.system.network import IPAddress

ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,32}")
MIN_RSA_BITS = 2048
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

CERTIFICATE = "certificate.pem"
KEY = "key.pem"
CSR = "csr.pem"


@dataclass(frozen=True)
class CertificateInfo:
    id: str
    state: str  # "ready", or "csr-pending" while a CSR waits for its certificate
    subject: str
    issuer: str | None
    not_before: datetime.datetime | None
    not_after: datetime.datetime | None
    dns_names: list[str]
    ip_addresses: list[str]
    fingerprint_sha256: str | None
    self_signed: bool
    chain_length: int  # certificates after the leaf
    key_type: str
    csr: str | None  # PEM, while pending


def check_id(value: str) -> None:
    if not ID_PATTERN.fullmatch(value):
        raise Invalid("id: 1 to 32 letters, digits, '-', '_' or '.'", field="id")


def key_type(key: object) -> str:
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        return f"EC {key.curve.name}"
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        return f"RSA {key.key_size}"
    return type(key).__name__


def _public_der(key: object) -> bytes:
    return key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_key(pem: bytes, password: str | None, field: str = "key") -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password.encode() if password else None)
    except TypeError:
        raise Invalid(f"{field}: the key is encrypted; give key_password", field=field) from None
    except ValueError as exc:
        raise Invalid(f"{field}: not a PEM private key, or a wrong key_password ({exc})", field=field) from None
    check_key(key, field)
    return key  # type: ignore[return-value]


def check_key(key: object, field: str) -> None:
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise Invalid(f"{field}: RSA keys need at least {MIN_RSA_BITS} bits", field=field)
    elif not isinstance(key, ec.EllipticCurvePrivateKey):
        raise Invalid(f"{field}: only RSA and EC keys work with every TLS client", field=field)


def load_chain(pem: bytes, field: str = "certificate") -> list[x509.Certificate]:
    try:
        certificates = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise Invalid(f"{field}: not PEM certificates", field=field) from None
    return certificates


def order_chain(key: PrivateKey, certificates: list[x509.Certificate], field: str) -> list[x509.Certificate]:
    """The leaf (the certificate of this key) first, then the rest as given."""
    mine = _public_der(key.public_key())
    # The leaf is the one certificate that issued none of the others; the key must
    # be its key (an intermediate's key would make a CA certificate the server's).
    ends = [c for c in certificates if not any(o is not c and o.issuer == c.subject for o in certificates)]
    candidates = ends if len(ends) == 1 else certificates
    leaf = next((c for c in candidates if _public_der(c.public_key()) == mine), None)
    if leaf is None:
        raise Invalid(
            f"{field}: the key does not match the certificate (their public keys differ)",
            field="key",
        )
    now = datetime.datetime.now(datetime.UTC)
    if leaf.not_valid_after_utc <= now:
        raise Invalid(f"{field}: the certificate expired on {leaf.not_valid_after_utc:%Y-%m-%d}", field=field)
    if leaf.not_valid_before_utc > now + datetime.timedelta(days=1):
        raise Invalid(
            f"{field}: the certificate is valid only from {leaf.not_valid_before_utc:%Y-%m-%d}", field=field
        )
    return [leaf] + [c for c in certificates if c is not leaf]


def _pem_chain(certificates: list[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)


def _pem_key(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def check_openssl_accepts(chain_pem: bytes, key_pem: bytes) -> None:
    """Load the pair into a throwaway server context, as the listener will."""
    with tempfile.TemporaryDirectory() as tmp:
        certificate, key = Path(tmp) / "c.pem", Path(tmp) / "k.pem"
        certificate.write_bytes(chain_pem)
        key.write_bytes(key_pem)
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(certificate, key)
        except ssl.SSLError as exc:
            raise Invalid(f"certificate: OpenSSL refuses it: {exc.reason or exc}", field="certificate") from None


def make_csr(common_name: str, dns_names: list[str], addresses: list[IPAddress]) -> tuple[bytes, bytes]:
    """A CSR and its new key (ECDSA P-256, as for the self-signed certificate)."""
    key = ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    )
    san: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    san += [x509.IPAddress(a) for a in addresses]
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    csr = builder.sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM), _pem_key(key)


def describe(identifier: str, folder: Path) -> CertificateInfo:
    certificate_file = folder / CERTIFICATE
    if not certificate_file.exists():
        csr = x509.load_pem_x509_csr((folder / CSR).read_bytes())
        return CertificateInfo(
            id=identifier, state="csr-pending", subject=csr.subject.rfc4514_string(), issuer=None,
            not_before=None, not_after=None, dns_names=_san(csr.extensions)[0],
            ip_addresses=_san(csr.extensions)[1], fingerprint_sha256=None, self_signed=False,
            chain_length=0, key_type=key_type(csr.public_key()), csr=(folder / CSR).read_text(),
        )
    chain = x509.load_pem_x509_certificates(certificate_file.read_bytes())
    leaf = chain[0]
    dns_names, ip_addresses = _san(leaf.extensions)
    return CertificateInfo(
        id=identifier, state="ready", subject=leaf.subject.rfc4514_string(),
        issuer=leaf.issuer.rfc4514_string(), not_before=leaf.not_valid_before_utc,
        not_after=leaf.not_valid_after_utc, dns_names=dns_names, ip_addresses=ip_addresses,
        fingerprint_sha256=leaf.fingerprint(hashes.SHA256()).hex(":"),
        self_signed=leaf.issuer == leaf.subject, chain_length=len(chain) - 1,
        key_type=key_type(leaf.public_key()), csr=None,
    )


def _san(extensions: x509.Extensions) -> tuple[list[str], list[str]]:
    try:
        san = extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], []
    return san.get_values_for_type(x509.DNSName), [str(a) for a in san.get_values_for_type(x509.IPAddress)]


class CertificateStore:
    """The folders of certificates; blocking file work (TlsService calls it in a thread)."""

    def __init__(self, directory: Path, write: Callable[[Path, bytes, int], None]) -> None:
        self.directory = directory
        self._write = write  # (path, bytes, mode) written beside and renamed

    def _folder(self, identifier: str) -> Path:
        check_id(identifier)
        return self.directory / identifier

    def ids(self) -> list[str]:
        if not self.directory.is_dir():
            return []
        return sorted(p.name for p in self.directory.iterdir() if p.is_dir() and ID_PATTERN.fullmatch(p.name))

    def get(self, identifier: str) -> CertificateInfo:
        folder = self._folder(identifier)
        if not folder.is_dir():
            raise NotFound(f"no certificate {identifier!r}", id=identifier)
        return describe(identifier, folder)

    def files(self, identifier: str) -> tuple[bytes, bytes]:
        """The chain and the key of a ready certificate."""
        folder = self._folder(identifier)
        if not (folder / CERTIFICATE).is_file():
            if (folder / CSR).is_file():
                raise Conflict(f"{identifier!r} is a CSR still waiting for its certificate", id=identifier)
            raise NotFound(f"no certificate {identifier!r}", id=identifier)
        return (folder / CERTIFICATE).read_bytes(), (folder / KEY).read_bytes()

    def _new_folder(self, identifier: str, replace_pending: bool = False) -> Path:
        folder = self._folder(identifier)
        if folder.exists() and not (replace_pending and not (folder / CERTIFICATE).exists()):
            raise Conflict(f"a certificate {identifier!r} exists; delete it first or choose another id", id=identifier)
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        return folder

    def add(self, identifier: str, chain: list[x509.Certificate], key: PrivateKey) -> CertificateInfo:
        chain = order_chain(key, chain, "certificate")
        chain_pem, key_pem = _pem_chain(chain), _pem_key(key)
        check_openssl_accepts(chain_pem, key_pem)
        folder = self._new_folder(identifier)
        self._write(folder / KEY, key_pem, 0o600)
        self._write(folder / CERTIFICATE, chain_pem, 0o644)
        return describe(identifier, folder)

    def add_pem(self, identifier: str, certificate: bytes, key: bytes | None, key_password: str | None) -> CertificateInfo:
        check_id(identifier)
        chain = load_chain(certificate)
        if key is not None:
            return self.add(identifier, chain, load_key(key, key_password))
        return self._complete_csr(identifier, chain)

    def _complete_csr(self, identifier: str, chain: list[x509.Certificate]) -> CertificateInfo:
        """The signed certificate for a CSR made here: its key is already on the device."""
        folder = self._folder(identifier)
        if not (folder / CSR).is_file() or (folder / CERTIFICATE).exists():
            raise Invalid(
                "key: give the key, or upload to the id of a CSR made on this device", field="key"
            )
        key = load_key((folder / KEY).read_bytes(), None)
        chain = order_chain(key, chain, "certificate")
        chain_pem = _pem_chain(chain)
        check_openssl_accepts(chain_pem, (folder / KEY).read_bytes())
        self._write(folder / CERTIFICATE, chain_pem, 0o644)
        (folder / CSR).unlink()
        return describe(identifier, folder)

    def add_pfx(self, identifier: str, data: bytes, password: str | None) -> CertificateInfo:
        check_id(identifier)
        try:
            key, leaf, extra = pkcs12.load_key_and_certificates(data, password.encode() if password else None)
        except ValueError:
            raise Invalid("password: wrong password, or not a PKCS#12 (PFX) file", field="password") from None
        if key is None or leaf is None:
            raise Invalid("pfx: the file must hold a certificate and its key", field="pfx")
        check_key(key, "pfx")
        return self.add(identifier, [leaf, *extra], key)  # type: ignore[arg-type]

    def add_self_signed(self, identifier: str, certificate: bytes, key: bytes) -> CertificateInfo:
        check_id(identifier)
        return self.add(identifier, load_chain(certificate), load_key(key, None))

    def add_csr(self, identifier: str, common_name: str, dns_names: list[str], ip_addresses: list[str]) -> CertificateInfo:
        check_id(identifier)
        if not common_name or len(common_name) > 64:
            raise Invalid("common_name: 1 to 64 characters", field="common_name")
        try:
            addresses = [ipaddress.ip_address(a) for a in ip_addresses]
        except ValueError as exc:
            raise Invalid(f"ip_addresses: {exc}", field="ip_addresses") from None
        csr_pem, key_pem = make_csr(common_name, dns_names, addresses)
        folder = self._new_folder(identifier)
        self._write(folder / KEY, key_pem, 0o600)
        self._write(folder / CSR, csr_pem, 0o644)
        return describe(identifier, folder)

    def delete(self, identifier: str) -> None:
        folder = self._folder(identifier)
        if not folder.is_dir():
            raise NotFound(f"no certificate {identifier!r}", id=identifier)
        shutil.rmtree(folder)
