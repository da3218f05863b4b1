"""The one place that starts ffmpeg: the recording command, the process, its output.

One ffmpeg per camera, stream copy (`-c copy`, never decode), the segment muxer
writing fragmented MP4 (see docs/design/recording.md for the container choice) and
reporting each closed segment on stdout (`-segment_list pipe:1`, csv), so closed
segments are pushed to us, never found by polling directories.

The command is built with ffmpeg-python, which keeps options as data rather than
string pasting; global options go first (ffmpeg-python appends them last, where
ffmpeg 5 warns that trailing options may be ignored).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import logging
import os
import re
import signal
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import ffmpeg as ffmpeg_python

log = logging.getLogger(__name__)

FFMPEG = "ffmpeg"
# Fragment at each keyframe, moov up front: a crash loses at most the fragment being
# written; default_base_moof is what browsers' MSE and HLS fMP4 expect.
MOVFLAGS = "+frag_keyframe+empty_moov+default_base_moof"
# The socket timeout (µs) for RTSP: a camera that goes silent without closing the
# connection ends ffmpeg in this time instead of hanging.
RTSP_TIMEOUT_US = 10_000_000
F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ (Linux), not in Python 3.11's fcntl


class AudioPolicy(StrEnum):
    """What to do with G.711 (or any audio MP4 can't carry as is). AAC is kept."""

    AAC = "aac"  # transcode to AAC (the only decode nvrd ever does: audio, cheap)
    DROP = "drop"


# Audio codecs that fragmented MP4 carries as they are.
COPYABLE_AUDIO = frozenset({"aac", "mp3", "opus"})


@dataclass(frozen=True)
class Source:
    url: str
    username: str | None = None
    password: str | None = None
    transport: str = "tcp"

    def url_with_credentials(self) -> str:
        if not self.username:
            return self.url
        parts = urlsplit(self.url)
        userinfo = quote(self.username, safe="")
        if self.password:
            userinfo += ":" + quote(self.password, safe="")
        return urlunsplit(parts._replace(netloc=f"{userinfo}@{parts.netloc}"))


def record_command(
    source: Source,
    pattern: Path,
    segment_seconds: int,
    audio_codec: str | None,
    audio_policy: AudioPolicy,
    ffmpeg: str = FFMPEG,
) -> list[str]:
    """argv for one camera. `audio_codec` is what the camera sent last time (None if
    unknown yet: then audio is copied, and if the camera turns out to send G.711
    the supervisor restarts at once with the policy applied)."""
    stream = ffmpeg_python.input(
        source.url_with_credentials(),
        rtsp_transport=source.transport,
        timeout=RTSP_TIMEOUT_US,
    )
    audio: dict[str, str] = {}
    streams = [stream["v:0"]]
    if audio_codec is None or audio_codec in COPYABLE_AUDIO:
        streams.append(stream["a:0?"])
    elif audio_policy is AudioPolicy.AAC:
        streams.append(stream["a:0?"])
        audio = {"c:a": "aac", "b:a": "64k"}
    output = ffmpeg_python.output(*streams, str(pattern), **segment_options(segment_seconds), **audio)
    return [ffmpeg, "-hide_banner", "-nostdin", "-nostats", "-loglevel", "info", *output.get_args()]


def segment_options(segment_seconds: int) -> dict[str, str | int]:
    """The segment muxer's output options: stream copy into fragmented MP4 files,
    each closed one listed on stdout. Tests make recordings faster than real time
    with exactly these options from a synthetic source."""
    return {
        "c": "copy",
        "f": "segment",
        "segment_time": segment_seconds,
        "segment_format": "mp4",
        "segment_format_options": f"movflags={MOVFLAGS}",
        "reset_timestamps": 1,
        "segment_list": "pipe:1",
        "segment_list_type": "csv",
    }


@dataclass(frozen=True)
class ClosedSegment:
    """One line of the csv segment list: the file, and its start and end in the
    output's stream time (seconds; the first packet of this ffmpeg run is 0)."""

    filename: str
    start: float
    end: float


def parse_segment_line(line: str) -> ClosedSegment | None:
    """`000003.mp4,30.000000,40.066667` → ClosedSegment; None for anything else."""
    parts = line.strip().rsplit(",", 2)
    if len(parts) != 3:
        return None
    try:
        return ClosedSegment(parts[0], float(parts[1]), float(parts[2]))
    except ValueError:
        return None


class Exit(StrEnum):
    """Why ffmpeg ended, from its last words; maps to a gap reason."""

    STOPPED = "stopped"  # we asked it to
    OFFLINE = "offline"  # could not connect, or the camera ended the stream
    UNAUTHORIZED = "unauthorized"
    NOT_FOUND = "not-found"  # wrong path on the camera
    DISK_FULL = "disk-full"
    STORAGE = "storage"  # the volume went away under it
    FAILED = "failed"  # anything else


_EXIT_PATTERNS: list[tuple[re.Pattern[str], Exit]] = [
    (re.compile(r"No space left on device", re.I), Exit.DISK_FULL),
    (re.compile(r"401 Unauthorized|authorization failed", re.I), Exit.UNAUTHORIZED),
    (re.compile(r"404 Not Found|Server returned 4\d\d", re.I), Exit.NOT_FOUND),
    (re.compile(r"Read-only file system|Input/output error.*\.mp4|No such file or directory.*\.mp4", re.I), Exit.STORAGE),
    (
        re.compile(
            r"Connection refused|Connection timed out|No route to host|Network is unreachable|"
            r"End of file|Connection reset|Host is unreachable|timed out|Name or service not known|"
            r"Temporary failure in name resolution",
            re.I,
        ),
        Exit.OFFLINE,
    ),
]

_INPUT_STREAM = re.compile(r"^\s*Stream #0:(\d+).*?: (Video|Audio): (\w+)")


def classify_exit(tail: list[str]) -> tuple[Exit, str | None]:
    """The reason from ffmpeg's last stderr lines, and the line that says so."""
    for line in reversed(tail):
        for pattern, reason in _EXIT_PATTERNS:
            if pattern.search(line):
                return reason, line.strip()
    last = next((line.strip() for line in reversed(tail) if line.strip()), None)
    return Exit.FAILED, last


def _die_with_parent() -> None:
    # If nvrd is killed (-9), its ffmpegs get SIGTERM and finish their segment
    # rather than recording on unsupervised. Linux prctl(PR_SET_PDEATHSIG).
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
    except OSError:
        pass


class FfmpegProcess:
    """A running recorder. Reads stderr (the input's codecs, errors) and yields
    closed segments from stdout."""

    STOP_GRACE_S = 10.0

    def __init__(self, argv: list[str], name: str) -> None:
        self.argv = argv
        self.name = name
        self.proc: asyncio.subprocess.Process | None = None
        self.tail: deque[str] = deque(maxlen=30)
        self.codecs: dict[str, str] = {}  # "video"/"audio" -> codec name of the input
        self.output_started = asyncio.Event()
        self.stop_requested = False
        self._stderr_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        log.debug("%s: starting %s", self.name, _redact(self.argv))
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            preexec_fn=_die_with_parent,
            env={**os.environ, "TZ": "UTC", "LC_ALL": "C"},
        )
        self._stderr_task = asyncio.create_task(self._read_stderr(), name=f"ffmpeg-stderr-{self.name}")

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    async def _read_stderr(self) -> None:
        assert self.proc and self.proc.stderr
        async for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip()
            self.tail.append(line)
            match = _INPUT_STREAM.match(line)
            if match and not self.output_started.is_set():
                kind = match.group(2).lower()
                self.codecs.setdefault(kind, match.group(3))
            elif line.startswith("Output #0") or line.startswith("Stream mapping:"):
                self.output_started.set()

    async def segments(self):  # noqa: ANN201 - async iterator of ClosedSegment
        assert self.proc and self.proc.stdout
        async for raw in self.proc.stdout:
            segment = parse_segment_line(raw.decode("utf-8", "replace"))
            if segment is not None:
                yield segment
            else:
                log.warning("%s: unexpected segment list line %r", self.name, raw[:200])

    async def wait(self) -> int:
        assert self.proc
        rc = await self.proc.wait()
        if self._stderr_task:
            await self._stderr_task
        return rc

    def terminate(self) -> None:
        """SIGTERM: ffmpeg writes the current segment's trailer and reports it."""
        self.stop_requested = True
        if self.proc and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        if self.proc and self.proc.returncode is None:
            self.proc.kill()


def _redact(argv: list[str]) -> list[str]:
    return [re.sub(r"(rtsps?://[^:/@]*:)[^@]*@", r"\1***@", a) for a in argv]


def export_command(container: str, metadata: dict[str, str], output: Path, ffmpeg: str = FFMPEG) -> list[str]:
    """argv that remuxes a clip (fragmented MP4 on stdin) into `container` (e.g.
    matroska) with `metadata` as tags; stream copy. Matroska has no edit list, so
    there the export starts at the keyframe at or before `from` (its tags say when
    `from` is)."""
    options: dict[str, str | int] = {"c": "copy", "map": "0", "f": container}
    if container == "matroska":
        # No CRC-32 element per cluster: ffmpeg 5.1 computes them with a table CRC
        # over every byte, 1.5 of the 2.2 s of CPU of a 1.5 GiB remux measured here
        # (docs/design/playback.md). They are optional in Matroska; a handed-over
        # file's integrity is the ZIP's HMAC (with a password) or the transfer's.
        options["write_crc32"] = 0
    output_stream = ffmpeg_python.output(ffmpeg_python.input("pipe:0", f="mp4"), str(output), **options)
    tags = [arg for key, value in metadata.items() for arg in ("-metadata", f"{key}={value}")]
    return [ffmpeg, "-hide_banner", "-nostats", "-loglevel", "error", "-y", *output_stream.get_args()[:-1], *tags,
            str(output)]


async def run_export(argv: list[str], feed: Callable[[int], None]) -> None:
    """Run an export command with `feed(fd)` writing its input into the pipe `fd`
    (ffmpeg's stdin); `feed` runs in a thread and reports its own progress. Raises
    RuntimeError with ffmpeg's words if it fails. Cancelling kills ffmpeg (the
    feeder then stops on a broken pipe)."""
    # Our own pipe, not asyncio's: the feeder writes to it blocking from a thread
    # (splice, no event-loop round trip per chunk). Close-on-exec, so no other child
    # inherits the write end and keeps ffmpeg from seeing the end of its input.
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    # A 1 MiB pipe instead of 64 KiB: 16 times fewer wake-ups per byte copied.
    with contextlib.suppress(OSError):
        fcntl.fcntl(write_fd, F_SETPIPE_SZ, 1 << 20)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=read_fd, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            preexec_fn=_die_with_parent, env={**os.environ, "TZ": "UTC", "LC_ALL": "C"},
        )
    except BaseException:
        os.close(write_fd)
        raise
    finally:
        os.close(read_fd)
    assert proc.stderr is not None
    errors = asyncio.create_task(proc.stderr.read())
    try:
        await asyncio.to_thread(_feed, feed, write_fd)
        rc = await proc.wait()
    except BaseException:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        errors.cancel()
        raise
    stderr = (await errors).decode("utf-8", "replace").strip()
    if rc != 0:
        raise RuntimeError(f"ffmpeg failed ({rc}): {stderr[-500:]}")


def _feed(feed: Callable[[int], None], fd: int) -> None:
    """`feed(fd)`, then the end of input; the thread owns `fd` (it is closed here
    even when the caller was cancelled and no longer waits)."""
    try:
        feed(fd)
    except BrokenPipeError:
        pass  # ffmpeg stopped reading: its exit status and stderr say why
    finally:
        os.close(fd)
