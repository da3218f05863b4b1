from nvrd.accounts import digest_ha1
from nvrd.api.digest import DigestCredentials, DigestNonces, NonceState, challenges, parse_params

# RFC 7616 §3.9.1: the worked example, for both algorithms.
RFC_HEADER = (
    'username="Mufasa", realm="http-auth@example.org", uri="/dir/index.html",'
    ' algorithm={algorithm}, nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",'
    ' nc=00000001, cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ", qop=auth,'
    ' response="{response}", opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"'
)
RFC_RESPONSES = {
    "MD5": "8ca523f5e9506fed4657c9700eebdbec",
    "SHA-256": "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
}


def test_rfc_7616_examples_verify() -> None:
    for algorithm, response in RFC_RESPONSES.items():
        params = parse_params(RFC_HEADER.format(algorithm=algorithm, response=response))
        credentials = DigestCredentials.parse(params)
        assert credentials is not None and credentials.algorithm == algorithm
        ha1 = digest_ha1("Mufasa", "http-auth@example.org", "Circle of Life", algorithm)
        assert credentials.matches(ha1, "GET")
        assert not credentials.matches(ha1, "POST")
        wrong = digest_ha1("Mufasa", "http-auth@example.org", "Circle of life", algorithm)
        assert not credentials.matches(wrong, "GET")


def test_parse_handles_quotes_escapes_and_refuses_garbage() -> None:
    assert parse_params('a="x, y", b=tok, c="q\\"d"') == {"a": "x, y", "b": "tok", "c": 'q"d'}
    assert parse_params("no equals here") is None
    assert parse_params('a="unterminated') is None


def test_unsupported_qop_or_algorithm_or_missing_fields_are_refused() -> None:
    base = parse_params(RFC_HEADER.format(algorithm="MD5", response=RFC_RESPONSES["MD5"]))
    assert DigestCredentials.parse({**base, "qop": "auth-int"}) is None
    assert DigestCredentials.parse({**base, "algorithm": "SHA-512-256"}) is None
    assert DigestCredentials.parse({**base, "algorithm": "MD5-sess"}) is None
    assert DigestCredentials.parse({k: v for k, v in base.items() if k != "cnonce"}) is None
    assert DigestCredentials.parse({**base, "nc": "zz"}) is None


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_each_nonce_count_is_accepted_once() -> None:
    nonces = DigestNonces(clock=Clock())
    nonce = nonces.issue()
    assert nonces.use(nonce, 1) is NonceState.OK
    assert nonces.use(nonce, 1) is NonceState.REPLAY
    assert nonces.use(nonce, 3) is NonceState.OK
    # 2 arrives late (parallel connections): still new, so accepted once.
    assert nonces.use(nonce, 2) is NonceState.OK
    assert nonces.use(nonce, 2) is NonceState.REPLAY
    assert nonces.use(nonce, 0) is NonceState.REPLAY
    assert nonces.use(nonce, 1000) is NonceState.OK
    assert nonces.use(nonce, 4) is NonceState.REPLAY  # behind the window


def test_nonces_expire_and_unknown_ones_are_stale() -> None:
    clock = Clock()
    nonces = DigestNonces(lifetime_s=300, clock=clock)
    nonce = nonces.issue()
    assert nonces.use("invented", 1) is NonceState.STALE
    clock.now += 299
    assert nonces.use(nonce, 1) is NonceState.OK
    clock.now += 2
    assert nonces.use(nonce, 2) is NonceState.STALE


def test_outstanding_nonces_are_bounded() -> None:
    nonces = DigestNonces(max_outstanding=3, clock=Clock())
    first = nonces.issue()
    for _ in range(3):
        nonces.issue()
    assert nonces.use(first, 1) is NonceState.STALE


def test_challenges_offer_sha256_first_then_md5() -> None:
    offered = challenges("nvrd X", "n1", "o1", stale=True)
    assert "algorithm=SHA-256" in offered[0] and "algorithm=MD5" in offered[1]
    assert all('qop="auth"' in c and 'nonce="n1"' in c and "stale=true" in c for c in offered)
