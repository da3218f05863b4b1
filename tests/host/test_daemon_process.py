"""The daemon as a real process: listeners, sd_notify, signals, robustness."""

from __future__ import annotations

import json
import signal
import socket
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from nvrd.system.tls import certificate_addresses

from .conftest import DaemonProcess, call, write_config

INSECURE = ssl.create_default_context()
INSECURE.check_hostname = False
INSECURE.verify_mode = ssl.CERT_NONE


def get_json(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=10, context=INSECURE) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def test_serves_http_and_https_then_stops_cleanly(daemon_process: DaemonProcess) -> None:
    daemon_process.start()
    daemon_process.wait_listening()
    status, info = get_json(daemon_process.http + "/api/v1/info")
    assert status == 200 and info["product"] == "nvrd"
    status, info_tls = get_json(daemon_process.https + "/api/v1/info")
    assert status == 200 and info_tls["serial"] == info["serial"]

    pem = ssl.get_server_certificate(("127.0.0.1", daemon_process.https_port)).encode()
    names, addresses = certificate_addresses(pem)
    assert socket.gethostname() in names
    assert any(str(a) == "127.0.0.1" for a in addresses)
    assert (daemon_process.state_dir / "tls/server.key").stat().st_mode & 0o077 == 0

    started = time.monotonic()
    assert daemon_process.stop() == 0
    assert time.monotonic() - started < 10


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_old_tls_is_refused(daemon_process: DaemonProcess) -> None:
    daemon_process.start()
    daemon_process.wait_listening()
    # This client does speak TLS 1.0/1.1 (SECLEVEL=0), so only the server can refuse.
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname, old.verify_mode = False, ssl.CERT_NONE
    old.minimum_version = ssl.TLSVersion.TLSv1
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("DEFAULT:@SECLEVEL=0")
    with pytest.raises(ssl.SSLError):
        with socket.create_connection(("127.0.0.1", daemon_process.https_port), timeout=5) as raw:
            old.wrap_socket(raw).close()


def test_huge_body_and_garbage_leave_it_running(daemon_process: DaemonProcess) -> None:
    daemon_process.start()
    daemon_process.wait_listening()
    authorization = daemon_process.setup_admin()
    body = b"{" * (10 * 1024 * 1024)
    request = urllib.request.Request(
        daemon_process.http + "/api/v1/system/logging", data=body, method="PATCH",
        headers={"Content-Type": "application/json"},
    )
    try:
        urllib.request.urlopen(request, timeout=30)
        code = 200
    except urllib.error.HTTPError as exc:
        code = exc.code
        assert exc.headers["Content-Type"].startswith("application/problem+json")
    except (ConnectionResetError, BrokenPipeError, urllib.error.URLError):
        code = 413  # the server answered and closed before the body was all sent
    assert code == 413
    with socket.create_connection(("127.0.0.1", daemon_process.http_port), timeout=5) as raw:
        raw.sendall(b"\x16\x03\x01 not http at all\r\n\r\n")
        raw.recv(1024)
    request = urllib.request.Request(
        daemon_process.http + "/api/v1/system/logging", data=b'{"level":', method="PATCH",
        headers={"Content-Type": "application/json", "Authorization": authorization},
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=10)
    assert caught.value.code == 400
    assert get_json(daemon_process.http + "/api/v1/info")[0] == 200
    assert daemon_process.proc.poll() is None


def test_sighup_reloads_log_levels(daemon_process: DaemonProcess) -> None:
    daemon_process.start()
    daemon_process.wait_listening()
    authorization = daemon_process.setup_admin()

    def level() -> str:
        status, body = call(daemon_process.http + "/api/v1/system/logging", authorization=authorization)
        assert status == 200, body
        return body["level"]

    assert level() == "info"
    write_config(
        daemon_process.config_path, daemon_process.state_dir,
        daemon_process.http_port, daemon_process.https_port, level="debug",
    )
    daemon_process.signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while level() != "debug":
        assert time.monotonic() < deadline, "SIGHUP did not reload the log level"
        time.sleep(0.1)
    # A broken file on reload is refused and the daemon keeps running.
    daemon_process.config_path.write_text("[http]\nbogus = 1\n")
    daemon_process.signal(signal.SIGHUP)
    time.sleep(0.5)
    assert get_json(daemon_process.http + "/api/v1/info")[0] == 200
    assert daemon_process.stop() == 0
    assert "reload refused" in daemon_process.stderr_text()


def test_sd_notify_ready_after_listening_watchdog_and_stopping(
    daemon_process: DaemonProcess, tmp_path: Path
) -> None:
    notify_path = tmp_path / "notify.sock"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(notify_path))
    receiver.settimeout(30)
    daemon_process.env = {"NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "1000000"}
    daemon_process.start()
    messages: list[str] = []
    while not any("READY=1" in m for m in messages):
        messages.append(receiver.recv(4096).decode())
    # READY must come only once the listeners accept connections.
    socket.create_connection(("127.0.0.1", daemon_process.http_port), timeout=1).close()
    socket.create_connection(("127.0.0.1", daemon_process.https_port), timeout=1).close()
    ready = next(m for m in messages if "READY=1" in m)
    assert "STATUS=Serving on http 127.0.0.1:" in ready
    watchdogs = 0
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        receiver.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            watchdogs += receiver.recv(4096).decode() == "WATCHDOG=1"
        except TimeoutError:
            break
    assert watchdogs >= 3  # every 0.5 s for WATCHDOG_USEC=1 s
    daemon_process.signal(signal.SIGTERM)
    receiver.settimeout(10)
    seen = ""
    while "STOPPING=1" not in seen:
        seen = receiver.recv(4096).decode()
    assert daemon_process.proc.wait(10) == 0
    receiver.close()


def test_port_in_use_fails_start_clearly(daemon_process: DaemonProcess) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", daemon_process.http_port))
        taken.listen()
        daemon_process.start()
        code = daemon_process.proc.wait(30)
    assert code == 1
    assert "cannot start" in daemon_process.stderr_text()


def test_zero_ports_disable_listeners(daemon_process: DaemonProcess) -> None:
    write_config(daemon_process.config_path, daemon_process.state_dir, daemon_process.http_port, 0)
    daemon_process.start()
    daemon_process.wait_listening()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", daemon_process.https_port), timeout=1).close()
    assert not (daemon_process.state_dir / "tls").exists()
    assert daemon_process.stop() == 0
