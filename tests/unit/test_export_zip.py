"""The encrypted export's ZIP (exports._encrypt): units encrypted in parallel from
their own CTR counters must give the archive a WinZip AES reader accepts, with the
password only. pyzipper's reader decrypts sequentially and checks the HMAC and the
password verifier. (7-Zip opens it: tests/host/playback/test_exports.py.)"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
import pyzipper

from nvrd.recording import exports

PASSWORD = "hand-over 2611"


def reader(data: bytes) -> exports.Reader:
    def read(offset: int, buffer: bytearray) -> int:
        piece = data[offset : offset + len(buffer)]
        buffer[: len(piece)] = piece
        return len(piece)

    return read


@pytest.mark.parametrize("size", [0, 100, 5 * 65_536 + 12_345])
def test_archive_opens_with_the_password_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int) -> None:
    monkeypatch.setattr(exports, "AES_CHUNK", 65_536)  # several units, some in flight at once
    data = os.urandom(size)
    target = tmp_path / "clip.mp4.zip"
    done: list[int] = []
    threads = threading.active_count()
    exports._encrypt(reader(data), size, "clip.mp4", target, PASSWORD, done.append)
    assert sum(done) == size
    assert threading.active_count() == threads  # the workers and the HMAC thread are gone
    with pyzipper.AESZipFile(target) as zf:
        info = zf.getinfo("clip.mp4")
        assert info.wz_aes_strength == 3 and info.wz_aes_version == 2  # AES-256, AE-2
        assert zf.read("clip.mp4", pwd=PASSWORD.encode()) == data
        with pytest.raises(RuntimeError, match="[Bb]ad password"):
            zf.read("clip.mp4", pwd=b"wrong")


def test_a_short_read_fails_the_export(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(exports, "AES_CHUNK", 65_536)
    data = os.urandom(300_000)
    threads = threading.active_count()
    with pytest.raises(OSError, match="could not read"):
        # The source is shorter than planned (a segment cut behind the index's back).
        exports._encrypt(reader(data[:200_000]), len(data), "clip.mp4", tmp_path / "x.zip", PASSWORD, lambda n: None)
    assert threading.active_count() == threads


def test_a_cancelled_export_stops_its_threads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # ExportService._run stops the job's ByteProgress when it is cancelled: the
    # thread writing the ZIP raises at its next report, and its helpers end.
    monkeypatch.setattr(exports, "AES_CHUNK", 65_536)
    data = os.urandom(1_000_000)
    reports: list[int] = []

    def progress(n: int) -> None:
        reports.append(n)
        if len(reports) == 2:
            raise exports.Stopped("the job was stopped")

    threads = threading.active_count()
    with pytest.raises(exports.Stopped):
        exports._encrypt(reader(data), len(data), "clip.mp4", tmp_path / "x.zip", PASSWORD, progress)
    assert len(reports) == 2 and threading.active_count() == threads
