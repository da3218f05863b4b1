import ipaddress
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from nvrd.system import tls

ADDRESSES = [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("192.0.2.7")]


def test_self_signed_has_hostname_and_addresses_in_san() -> None:
    cert_pem, _ = tls.make_self_signed("recorder-1", ADDRESSES)
    names, addresses = tls.certificate_addresses(cert_pem)
    assert "recorder-1" in names and "localhost" in names
    assert set(addresses) == set(ADDRESSES)
    certificate = x509.load_pem_x509_certificate(cert_pem)
    assert isinstance(certificate.public_key(), ec.EllipticCurvePublicKey)
    assert certificate.public_key().curve.name == "secp256r1"


def test_ensure_makes_once_and_keeps_key_private(tmp_path: Path) -> None:
    paths = tls.CertificatePaths.in_dir(tmp_path / "tls")
    assert tls.ensure_certificate(paths, "h", ADDRESSES) is True
    first = paths.certificate.read_bytes()
    assert tls.ensure_certificate(paths, "h", ADDRESSES) is False
    assert paths.certificate.read_bytes() == first
    assert paths.key.stat().st_mode & 0o077 == 0


def test_context_refuses_old_tls(tmp_path: Path) -> None:
    paths = tls.CertificatePaths.in_dir(tmp_path)
    tls.ensure_certificate(paths, "h", ADDRESSES)
    context = tls.server_context(paths)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert all(c["protocol"] != "TLSv1" for c in context.get_ciphers())
    assert all("ECDHE" in c["name"] or c["protocol"] == "TLSv1.3" for c in context.get_ciphers())
