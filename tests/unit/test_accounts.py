import pytest

from nvrd.accounts import (
    ScryptCost,
    VerifiedCache,
    check_name,
    check_password,
    digest_ha1,
    hash_password,
    verify_password,
)
from nvrd.errors import Invalid

CHEAP = ScryptCost(n=16, r=8, p=1)
PRINTABLE = "".join(chr(c) for c in range(32, 127))  # 95 characters


@pytest.mark.parametrize("password", ["x", " ", PRINTABLE[:64], PRINTABLE[31:95], "a" * 64, 'q"\\:@ ~'])
def test_printable_ascii_up_to_64_is_accepted(password: str) -> None:
    check_password(password)


@pytest.mark.parametrize(
    ("password", "reason"),
    [
        ("", "empty"),
        ("a" * 65, "at most 64"),
        (PRINTABLE[:65], "at most 64"),
        ("pässword", "code 228"),
        ("tab\there", "code 9"),
        ("nl\n", "code 10"),
        ("del\x7f", "code 127"),
        ("nul\x00", "code 0"),
        ("emoji\U0001f600", "code 128512"),
    ],
)
def test_other_passwords_are_refused_naming_why(password: str, reason: str) -> None:
    with pytest.raises(Invalid) as caught:
        check_password(password)
    assert caught.value.field == "password"
    assert reason in caught.value.detail


@pytest.mark.parametrize("name", ["admin", "a", "A.b-c_9", "x" * 32])
def test_names_accepted(name: str) -> None:
    check_name(name)


@pytest.mark.parametrize("name", ["", "x" * 33, "with space", "colon:name", "ünï", "a/b"])
def test_names_refused(name: str) -> None:
    with pytest.raises(Invalid):
        check_name(name)


def test_scrypt_hash_verifies_only_its_password_and_records_its_cost() -> None:
    encoded = hash_password("correct horse", CHEAP)
    assert encoded.startswith("scrypt$16$8$1$")
    assert "correct horse" not in encoded
    assert verify_password("correct horse", encoded)
    assert not verify_password("correct hors", encoded)
    assert hash_password("correct horse", CHEAP) != encoded  # salted
    assert not verify_password("x", "md5$whatever")


def test_ha1_is_h_of_user_realm_password() -> None:
    import hashlib

    # RFC 7616 §3.9.1 example credentials.
    assert digest_ha1("Mufasa", "http-auth@example.org", "Circle of Life", "MD5") == (
        hashlib.md5(b"Mufasa:http-auth@example.org:Circle of Life").hexdigest()
    )
    assert digest_ha1("Mufasa", "http-auth@example.org", "Circle of Life", "SHA-256") == (
        hashlib.sha256(b"Mufasa:http-auth@example.org:Circle of Life").hexdigest()
    )


def test_verified_cache_hits_only_the_same_password_and_forgets() -> None:
    cache = VerifiedCache(ttl_s=60)
    cache.remember("vms", "pw1")
    assert cache.hit("vms", "pw1")
    assert not cache.hit("vms", "pw2")
    assert not cache.hit("other", "pw1")
    assert b"pw1" not in repr(cache.entries).encode()
    cache.forget("vms")
    assert not cache.hit("vms", "pw1")


def test_verified_cache_expires() -> None:
    cache = VerifiedCache(ttl_s=0.0)
    cache.remember("vms", "pw1")
    assert not cache.hit("vms", "pw1")
