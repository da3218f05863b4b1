"""Authentication and HTTPS certificates against the daemon as a process, with real
clients: curl (Digest, Basic over HTTPS), openssl s_client, nvrctl, and a client
in a network namespace for a non-loopback address."""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from .conftest import ADMIN, ADMIN_PASSWORD, DaemonProcess, call, free_port, write_config


def curl(*args: str, netns: str | None = None) -> tuple[int, str, str]:
    """(HTTP status, body, verbose log) of one curl call."""
    argv = ["curl", "-sS", "-v", "--max-time", "10", "-w", "\n%{http_code}", *args]
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    body, _, status = done.stdout.rpartition("\n")
    return int(status or 0), body, done.stderr


@pytest.fixture
def running(daemon_process: DaemonProcess) -> DaemonProcess:
    daemon_process.start()
    daemon_process.wait_listening()
    daemon_process.setup_admin()
    return daemon_process


def test_curl_digest_over_http(running: DaemonProcess) -> None:
    status, body, log = curl("--digest", "-u", f"{ADMIN}:{ADMIN_PASSWORD}", running.http + "/api/v1/accounts")
    assert status == 200, log
    assert [a["name"] for a in json.loads(body)] == [ADMIN]
    assert "Authorization: Digest" in log and "algorithm=SHA-256" in log
    status, _, _ = curl("--digest", "-u", f"{ADMIN}:wrong", running.http + "/api/v1/accounts")
    assert status == 401


def test_curl_basic_over_https(running: DaemonProcess) -> None:
    status, body, log = curl("-k", "-u", f"{ADMIN}:{ADMIN_PASSWORD}", running.https + "/api/v1/auth/session")
    assert status == 200, log
    assert json.loads(body)["method"] == "basic"
    status, _, _ = curl("-k", "-u", f"{ADMIN}:wrong", running.https + "/api/v1/auth/session")
    assert status == 401


# --- a client on another address: a network namespace and a veth pair ----------------


@dataclass
class Namespace:
    name: str
    host_address: str  # our end, where the daemon listens
    peer_address: str  # the client's end, inside the namespace


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture
def netns() -> Iterator[Namespace]:
    """A namespace joined to this host by a veth pair, 10.213.57.0/30 on that pair
    only: traffic never leaves the two ends."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 to make a network namespace")
    tag = f"{os.getpid() % 100000}"
    namespace = Namespace(f"nvrd-test-{tag}", "10.213.57.1", "10.213.57.2")
    host_end, peer_end = f"nvh{tag}", f"nvp{tag}"
    _ip("netns", "add", namespace.name)
    try:
        _ip("link", "add", host_end, "type", "veth", "peer", "name", peer_end)
        _ip("link", "set", peer_end, "netns", namespace.name)
        _ip("addr", "add", f"{namespace.host_address}/30", "dev", host_end)
        _ip("link", "set", host_end, "up")
        _ip("-n", namespace.name, "addr", "add", f"{namespace.peer_address}/30", "dev", peer_end)
        _ip("-n", namespace.name, "link", "set", peer_end, "up")
        _ip("-n", namespace.name, "link", "set", "lo", "up")
        yield namespace
    finally:
        subprocess.run(["ip", "link", "del", host_end], capture_output=True)
        subprocess.run(["ip", "netns", "del", namespace.name], capture_output=True)


def test_basic_over_plain_http_from_another_address_is_refused(
    daemon_process: DaemonProcess, netns: Namespace
) -> None:
    daemon_process.host = netns.host_address
    write_config(
        daemon_process.config_path, daemon_process.state_dir, daemon_process.http_port,
        daemon_process.https_port, listen=netns.host_address,
    )
    daemon_process.start()
    daemon_process.wait_listening()
    daemon_process.setup_admin()
    credentials = f"{ADMIN}:{ADMIN_PASSWORD}"
    url = daemon_process.http + "/api/v1/auth/session"

    status, body, log = curl("-u", credentials, url, netns=netns.name)
    assert status == 401, log
    assert "only over HTTPS or from loopback" in json.loads(body)["detail"]
    offered = [line for line in log.splitlines() if line.lower().startswith("< www-authenticate")]
    assert offered and not any("Basic" in line for line in offered)

    # The same client may use Digest over HTTP, or Basic over HTTPS.
    status, body, log = curl("--digest", "-u", credentials, url, netns=netns.name)
    assert status == 200 and json.loads(body)["method"] == "digest", log
    status, body, log = curl("-k", "-u", credentials, daemon_process.https + "/api/v1/auth/session", netns=netns.name)
    assert status == 200 and json.loads(body)["method"] == "basic", log
    # A browser login would send the password in the clear too.
    status, body, _ = curl(
        "-H", "Content-Type: application/json", "-d", json.dumps({"username": ADMIN, "password": ADMIN_PASSWORD}),
        url, netns=netns.name,
    )
    assert status == 403
    # Refusals over plain HTTP are not counted as failed logins: not blocked.
    status, _, _ = curl("--digest", "-u", credentials, url, netns=netns.name)
    assert status == 200

    # HTTPS only: plain HTTP from that address is refused whatever the credentials.
    status, body = call(
        daemon_process.https + "/api/v1/system/http", "PATCH", {"access": "https"},
        authorization=f"Basic {base64.b64encode(credentials.encode()).decode()}",
    )
    assert status == 200 and body["applied"], body
    status, body, _ = curl("--digest", "-u", credentials, url, netns=netns.name)
    assert status == 403 and json.loads(body)["type"] == "urn:nvrd:problem:https-only"
    status, _, _ = curl("-k", "-u", credentials, daemon_process.https + "/api/v1/auth/session", netns=netns.name)
    assert status == 200


def test_ports_move_without_restart(running: DaemonProcess) -> None:
    admin = "Basic " + base64.b64encode(f"{ADMIN}:{ADMIN_PASSWORD}".encode()).decode()
    old_https, new_https, new_http = running.https_port, free_port(), free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", new_http))
        taken.listen()
        status, problem = call(
            running.http + "/api/v1/system/http", "PATCH", {"http_port": new_http, "https_port": new_https},
            authorization=admin,
        )
        assert status == 409 and problem["field"] == "http_port"
    # Nothing moved: the free HTTPS port was released again.
    assert call(running.https + "/api/v1/info")[0] == 200
    status, body = call(
        running.http + "/api/v1/system/http", "PATCH", {"https_port": new_https}, authorization=admin
    )
    assert status == 200 and body["applied"] and body["https_port"] == new_https
    running.https_port = new_https
    assert call(running.https + "/api/v1/info")[0] == 200
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", old_https), timeout=2).close()
    # The setting outlives a restart and wins over the file.
    running.stop()
    running.start()
    running.wait_listening()
    assert call(running.https + "/api/v1/info")[0] == 200


# --- certificates ----------------------------------------------------------------------


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _issue(subject: str, key, issuer: str, issuer_key, ca: bool, days: int = 30) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject)).issuer_name(_name(issuer))
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(*certificates: x509.Certificate) -> str:
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certificates)


def _key_pem(key) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def served_chain(port: int) -> list[str]:
    """The subjects of the chain the server sends, as openssl s_client sees them."""
    done = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-showcerts"],
        input="", capture_output=True, text=True, timeout=20,
    )
    return re.findall(r"^\s*\d+ s:(.*)$", done.stdout, flags=re.MULTILINE)


def test_certificates_upload_pem_chain_pfx_csr_and_serve_without_restart(running: DaemonProcess) -> None:
    admin = "Basic " + base64.b64encode(f"{ADMIN}:{ADMIN_PASSWORD}".encode()).decode()
    api = running.https + "/api/v1/system/certificates"
    pid = running.proc.pid

    status, listed = call(api, authorization=admin)
    assert status == 200 and listed["active"] == "default"
    assert [c["id"] for c in listed["certificates"]] == ["default"]

    # A PEM with its chain: root -> intermediate -> leaf.
    root_key = ec.generate_private_key(ec.SECP256R1())
    mid_key = ec.generate_private_key(ec.SECP256R1())
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    # The root itself stays with its owner; the device gets the leaf and the intermediate.
    mid = _issue("Test Intermediate", mid_key, "Test Root", root_key, ca=True)
    leaf = _issue("chain.nvrd.test", leaf_key, "Test Intermediate", mid_key, ca=False)

    # A key that doesn't match is refused, with the reason.
    status, problem = call(api, "POST", {"id": "bad", "certificate": _pem(leaf, mid), "key": _key_pem(mid_key)}, admin)
    assert status == 422 and problem["field"] == "key"
    assert "does not match" in problem["detail"]
    status, problem = call(api, "POST", {"id": "bad", "certificate": "junk", "key": _key_pem(leaf_key)}, admin)
    assert status == 422 and problem["field"] == "certificate"

    status, stored = call(
        api, "POST", {"id": "chain", "certificate": _pem(mid, leaf), "key": _key_pem(leaf_key), "activate": True}, admin
    )
    assert status == 201, stored
    assert stored["active"] and stored["chain_length"] == 1 and stored["subject"] == "CN=chain.nvrd.test"
    assert served_chain(running.https_port) == ["CN = chain.nvrd.test", "CN = Test Intermediate"]

    # A PFX (RSA, with a password) swaps the key type too.
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_leaf = _issue("pfx.nvrd.test", rsa_key, "Test Intermediate", mid_key, ca=False)
    pfx = pkcs12.serialize_key_and_certificates(
        b"nvrd", rsa_key, rsa_leaf, [mid], serialization.BestAvailableEncryption(b"pfx-pass")
    )
    encoded = base64.b64encode(pfx).decode()
    status, problem = call(api, "POST", {"id": "pfx", "pfx": encoded, "password": "wrong"}, admin)
    assert status == 422 and problem["field"] == "password"
    status, stored = call(api, "POST", {"id": "pfx", "pfx": encoded, "password": "pfx-pass", "activate": True}, admin)
    assert status == 201, stored
    assert stored["key_type"] == "RSA 2048"
    assert served_chain(running.https_port) == ["CN = pfx.nvrd.test", "CN = Test Intermediate"]

    # A CSR whose key stays on the device, signed elsewhere, then uploaded without a key.
    status, pending = call(api + "/csr", "POST", {"id": "corp", "common_name": "csr.nvrd.test", "dns_names": ["localhost"]}, admin)
    assert status == 201 and pending["state"] == "csr-pending"
    csr = x509.load_pem_x509_csr(pending["csr"].encode())
    assert csr.subject.rfc4514_string() == "CN=csr.nvrd.test"
    now = datetime.datetime.now(datetime.UTC)
    signed = (
        x509.CertificateBuilder().subject_name(csr.subject).issuer_name(mid.subject)
        .public_key(csr.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1)).not_valid_after(now + datetime.timedelta(days=30))
        .sign(mid_key, hashes.SHA256())
    )
    status, stored = call(api, "POST", {"id": "corp", "certificate": _pem(signed, mid)}, admin)
    assert status == 201 and stored["state"] == "ready", stored
    status, _ = call(api + "/active", "PUT", {"id": "corp"}, admin)
    assert status == 200
    assert served_chain(running.https_port)[0] == "CN = csr.nvrd.test"

    # Self-signed again; the active one cannot be deleted.
    status, stored = call(api + "/self-signed", "POST", {"id": "fresh", "activate": True}, admin)
    assert status == 201 and stored["self_signed"]
    assert len(served_chain(running.https_port)) == 1
    status, _ = call(api + "/fresh", "DELETE", authorization=admin)
    assert status == 409
    status, _ = call(api + "/chain", "DELETE", authorization=admin)
    assert status == 204

    assert running.proc.pid == pid and running.proc.poll() is None  # never restarted
    status, records = call(running.https + "/api/v1/logs/audit", authorization=admin)
    certificate_records = [
        (r["account"], r["action"], r["target"], r["result"]) for r in records if "certificate" in r["action"] or r["action"] == "create-csr"
    ]
    assert certificate_records == [
        (ADMIN, "upload-certificate", "bad", "failed"),
        (ADMIN, "upload-certificate", "bad", "failed"),
        (ADMIN, "upload-certificate", "chain", "ok"),
        (ADMIN, "upload-certificate", "pfx", "failed"),
        (ADMIN, "upload-certificate", "pfx", "ok"),
        (ADMIN, "create-csr", "corp", "ok"),
        (ADMIN, "upload-certificate", "corp", "ok"),
        (ADMIN, "activate-certificate", "corp", "ok"),
        (ADMIN, "create-self-signed-certificate", "fresh", "ok"),
        (ADMIN, "delete-certificate", "fresh", "failed"),
        (ADMIN, "delete-certificate", "chain", "ok"),
    ]

    # And the choice survives a restart.
    running.stop()
    running.start()
    running.wait_listening()
    assert served_chain(running.https_port) == ["CN = " + socket.gethostname()]


# --- nvrctl ------------------------------------------------------------------------------


def nvrctl(home: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("XDG_CONFIG_HOME", "NVRCTL_TOKEN")}
    env["HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-m", "nvrd.cli", *args], input=stdin, capture_output=True, text=True,
        env=env, timeout=30,
    )


def test_nvrctl_setup_login_accounts(daemon_process: DaemonProcess, tmp_path: Path) -> None:
    daemon_process.start()
    daemon_process.wait_listening()
    url = ["--url", daemon_process.http]
    done = nvrctl(tmp_path, *url, "accounts")
    assert done.returncode == 1 and "setup" in done.stderr
    done = nvrctl(tmp_path, *url, "setup", "boss", "--password-stdin", stdin="boss password\n")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["role"] == "admin"
    done = nvrctl(tmp_path, *url, "login", "boss", "--password-stdin", stdin="wrong\n")
    assert done.returncode == 1 and "401" in done.stderr
    done = nvrctl(tmp_path, *url, "login", "boss", "--password-stdin", stdin="boss password\n")
    assert done.returncode == 0, done.stderr
    stored = tmp_path / ".config/nvrctl/tokens.json"
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    assert "boss password" not in stored.read_text()
    assert json.loads(stored.read_text())[daemon_process.http]["token"].startswith("nvrd_")
    done = nvrctl(tmp_path, *url, "accounts")
    assert done.returncode == 0 and done.stdout.split() == ["boss", "admin"]
    done = nvrctl(tmp_path, *url, "whoami")
    assert json.loads(done.stdout)["method"] == "bearer"
    done = nvrctl(tmp_path, *url, "logout")
    assert done.returncode == 0
    assert nvrctl(tmp_path, *url, "accounts").returncode == 1
