import datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from nvrd.errors import Conflict, Invalid
from nvrd.system.certificates import CertificateStore
from nvrd.system.tls import _write_private


def certificate(key, days: int = 30, start_days: int = 0, name: str = "leaf") -> str:
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    built = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now + datetime.timedelta(days=start_days) - datetime.timedelta(days=60 if not start_days else 0))
        .not_valid_after(now + datetime.timedelta(days=start_days + days))
        .sign(key, hashes.SHA256())
    )
    return built.public_bytes(serialization.Encoding.PEM).decode()


def key_pem(key, password: bytes | None = None) -> str:
    encryption = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption).decode()


@pytest.fixture
def store(tmp_path: Path) -> CertificateStore:
    return CertificateStore(tmp_path / "store", _write_private)


def test_pem_is_stored_with_a_private_key_file(store: CertificateStore) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    info = store.add_pem("one", certificate(key).encode(), key_pem(key).encode(), None)
    assert info.state == "ready" and info.subject == "CN=leaf" and info.key_type == "EC secp256r1"
    assert (store.directory / "one/key.pem").stat().st_mode & 0o077 == 0
    with pytest.raises(Conflict):
        store.add_pem("one", certificate(key).encode(), key_pem(key).encode(), None)


@pytest.mark.parametrize(
    ("change", "field", "reason"),
    [
        ("other key", "key", "does not match"),
        ("expired", "certificate", "expired"),
        ("future", "certificate", "valid only from"),
        ("encrypted, no password", "key", "encrypted"),
        ("encrypted, wrong password", "key", "wrong key_password"),
        ("bad id", "id", "letters"),
    ],
)
def test_refusals_name_field_and_reason(store: CertificateStore, change: str, field: str, reason: str) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    cert, private, password, identifier = certificate(key), key_pem(key), None, "x"
    if change == "other key":
        private = key_pem(ec.generate_private_key(ec.SECP256R1()))
    elif change == "expired":
        cert = certificate(key, days=-1)
    elif change == "future":
        cert = certificate(key, start_days=10)
    elif change == "encrypted, no password":
        private = key_pem(key, b"secret")
    elif change == "encrypted, wrong password":
        private, password = key_pem(key, b"secret"), "nope"
    elif change == "bad id":
        identifier = "../etc"
    with pytest.raises(Invalid) as caught:
        store.add_pem(identifier, cert.encode(), private.encode(), password)
    assert caught.value.field == field and reason in caught.value.detail
    assert store.ids() == []


def test_small_rsa_keys_are_refused(store: CertificateStore) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(Invalid, match="2048"):
        store.add_pem("rsa", certificate(key).encode(), key_pem(key).encode(), None)


def test_certificate_without_key_needs_a_csr_made_here(store: CertificateStore) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(Invalid) as caught:
        store.add_pem("x", certificate(key).encode(), None, None)
    assert caught.value.field == "key"
    pending = store.add_csr("corp", "recorder.example", ["recorder.example"], ["192.0.2.9"])
    assert pending.state == "csr-pending" and pending.dns_names == ["recorder.example"]
    assert pending.ip_addresses == ["192.0.2.9"]
    with pytest.raises(Conflict):
        store.files("corp")
    # A certificate for some other key does not complete the CSR.
    with pytest.raises(Invalid, match="does not match"):
        store.add_pem("corp", certificate(key).encode(), None, None)
