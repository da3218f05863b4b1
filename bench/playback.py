"""Playback and export, measured on the daemon as a process.

1. Export throughput: one hour of 4 Mbit/s video (60 segments of 60 s, made faster
   than real time by ffmpeg's segment muxer with the recorder's options and indexed
   by the recorder's code), exported as MP4 and MKV, each plain and in an AES-256
   ZIP, through POST /exports, against `cat` of the same segment files to the
   same disk.
   Ratio = export time / cat time (target <= 1.5).
2. Time to first byte of clip.mp4 (5 minutes; and 1, 7 and 31 days ending there) and
   of playback.m3u8 (1 hour) for a range 7 days back in the 10-million-row index
   that bench/recording.py builds (cached in build/bench): on a fresh daemon, its
   first request (from the disk where the page cache can be dropped) and warm ones.
   The segment files of camera c042 in those ranges are hard links to the hour's
   real segments, which its rows describe (fmp4.Media); the rest of that index has
   no files.

`python -m bench.playback` runs both; `--skip-export`, `--skip-ttfb` one of them.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

from bench.recording import AUTH, WORK, build_index, start_nvrd, stop, touch_tail

CAMERA = "bench"
T0 = 1_795_514_400_000  # 2026-11-24T10:00:00Z
HOUR_VOLUME = WORK / "playback-1h" / "volume"




def api(base: str, method: str, path: str, body: object = None) -> tuple[int, object]:
    """A JSON request as the administrator (Basic, accepted from loopback)."""
    parts = urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    headers = {**AUTH, "Content-Type": "application/json"} if body is not None else dict(AUTH)
    conn.request(method, path, json.dumps(body) if body is not None else None, headers)
    response = conn.getresponse()
    raw = response.read()
    conn.close()
    return response.status, json.loads(raw) if raw else None


def start_daemon(directory: Path, volume: Path) -> tuple[object, str]:
    """The daemon on `volume`, with its first administrator made."""
    proc, base, _log = start_nvrd(directory, volume)  # it makes the administrator
    return proc, base


def iso(ms: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + f".{int(ms) % 1000:03d}Z"


def hour_of_video() -> Path:
    """The cached volume with one hour of 4 Mbit/s video of camera `bench`."""
    if not (HOUR_VOLUME / "done").exists():
        from tests.host.playback.conftest import build_recording
        from tests.host.recording.conftest import clip

        print("bench: cutting and indexing one hour of 4 Mbit/s video once...", flush=True)
        shutil.rmtree(HOUR_VOLUME, ignore_errors=True)
        asyncio.run(build_recording(HOUR_VOLUME, clip("h264-4m-60"), CAMERA, T0, 60, {"stream_loop": 59}))
        (HOUR_VOLUME / "done").touch()
    return HOUR_VOLUME


def timed_cat(files: list[Path], target: Path) -> float:
    """`cat` of the files into one on the same volume, and an fsync (an export is
    fsynced before it is done: both times are to the disk, not the page cache)."""
    os.sync()  # start from clean pages, as the export does
    started = time.perf_counter()
    with open(target, "wb") as out:
        subprocess.run(["cat", *map(str, files)], stdout=out, check=True)
        os.fsync(out.fileno())
    elapsed = time.perf_counter() - started
    target.unlink()
    return elapsed


def timed_export(base: str, body: dict[str, object]) -> tuple[float, int]:
    os.sync()
    started = time.perf_counter()
    status, export = api(base, "POST", "/api/v1/exports", body)
    assert status == 202, export
    while True:
        _, export = api(base, "GET", f"/api/v1/exports/{export['id']}")  # type: ignore[index]
        if export["state"] in ("succeeded", "failed"):  # type: ignore[index]
            break
        time.sleep(0.05)
    elapsed = time.perf_counter() - started
    assert export["state"] == "succeeded", export  # type: ignore[index]
    api(base, "DELETE", f"/api/v1/exports/{export['id']}")  # type: ignore[index]
    return elapsed, export["bytes"]  # type: ignore[index]


def export_throughput(rounds: int) -> None:
    volume = hour_of_video()
    conn = sqlite3.connect(volume / "recordings" / "index.db")
    files = [volume / p for (p,) in conn.execute("SELECT path FROM segment ORDER BY start_ms")]
    start, end = conn.execute("SELECT min(start_ms), max(end_ms) FROM segment").fetchone()
    conn.close()
    size = sum(f.stat().st_size for f in files)
    directory = Path(tempfile.mkdtemp(prefix="nvrd-export-", dir=WORK))
    proc, base = start_daemon(directory, volume)
    # Ratios are what compare: other work on the machine slows both sides, but not
    # equally (an export uses both cores, cat one), so the load is shown too.
    load_before = os.getloadavg()[0]
    try:
        whole = {"camera": CAMERA, "from": iso(start), "to": iso(end)}
        kinds = {
            "MP4": {"format": "mp4"},
            "MKV (ffmpeg remux)": {"format": "mkv"},
            "MP4 in an AES-256 ZIP": {"format": "mp4", "password": "bench"},
            "MKV in an AES-256 ZIP": {"format": "mkv", "password": "bench"},
        }
        cats: list[float] = []
        times: dict[str, list[float]] = {kind: [] for kind in kinds}
        for _ in range(rounds):
            cats.append(timed_cat(files, volume / "cat.out"))
            for kind, options in kinds.items():
                times[kind].append(timed_export(base, {**whole, **options})[0])
    finally:
        stop(proc)  # type: ignore[arg-type]
        shutil.rmtree(directory, ignore_errors=True)
    cat_s = statistics.median(cats)
    print(f"  export of 1 h at 4 Mbit/s ({len(files)} segments, {size / 2**30:.2f} GiB), median of {rounds},"
          f" each to the disk (fsync); load average before the runs {load_before:.2f}:")
    print(f"    cat of the segment files to the volume: {cat_s:.2f} s ({size / cat_s / 2**20:.0f} MiB/s)")
    for kind, samples in times.items():
        took = statistics.median(samples)
        print(f"    export {kind}: {took:.2f} s ({size / took / 2**20:.0f} MiB/s), ratio to cat {took / cat_s:.2f}"
              " (target <= 1.5)")


def first_byte_ms(base: str, path: str) -> tuple[float, int]:
    """Milliseconds from sending the request to the first body byte; and status."""
    parts = urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    started = time.perf_counter()
    conn.request("GET", path, headers=AUTH)
    response = conn.getresponse()
    response.read(1)
    elapsed = (time.perf_counter() - started) * 1000
    conn.close()
    return elapsed, response.status


def drop_page_cache() -> bool:
    """Empty the kernel's page cache (root only), for a first request that reads
    the index and the files from the disk. False where it can't be done."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def ttfb_index(rows: int, reals: list[Path]) -> Path:
    """The cached `rows`-row index; camera c042's row `id` describes the fragments
    of reals[id % len(reals)] (fmp4.Media, as the recorder records at commit), the
    file its requested rows are linked to."""
    from nvrd.recording.fmp4 import scan, summarize

    medias = [summarize(scan(real)) for real in reals]
    volume = WORK / f"index-{rows}" / "volume"
    db = volume / "recordings" / "index.db"
    if not db.exists():
        started = time.monotonic()
        build_index(db.with_suffix(".part"), rows, 128, media=medias[0])
        db.with_suffix(".part").rename(db)
        print(f"  built a {rows:,}-row index in {time.monotonic() - started:.0f} s (cached in {db.parent})")
    from nvrd.db import connect, migrate
    from nvrd.recording.index import MIGRATIONS

    conn = connect(db)
    migrate(conn, MIGRATIONS, db)  # an index built by bench/recording.py, or an older schema
    changed = 0
    conn.execute("BEGIN")
    for k, media in enumerate(medias):
        assert media is not None
        changed += conn.execute(
            "UPDATE segment SET media_offset = ?, media_bytes = ?, fragments = ?, last_fragment_ms = ?, layout = ?"
            " WHERE camera = 'c042' AND id % ? = ? AND (media_bytes IS NOT ? OR layout IS NOT ?)",
            (media.offset, media.bytes, media.fragments, media.last_start_ms, media.layout, len(medias), k,
             media.bytes, media.layout),
        ).rowcount
    conn.execute("COMMIT")
    conn.close()
    if changed:
        print(f"  described {changed:,} rows of c042 as the real segments' fragments")
    # Start-up reconciliation drops rows without files in each camera's newest hour:
    # without these, every daemon start would shorten the index by an hour.
    touch_tail(volume)
    return volume


def link_range(volume: Path, conn: sqlite3.Connection, from_ms: int, to_ms: int, reals: list[Path]) -> int:
    """Hard-link a real segment wherever a c042 row overlapping [from, to] says a
    file is (each real file gets a share: a month is 45 000 links, and an inode
    takes 65 000 at most); how many were made."""
    made = 0
    for segment_id, path in conn.execute(
        "SELECT id, path FROM segment WHERE camera = 'c042' AND start_ms < ? AND end_ms > ? ORDER BY start_ms",
        (to_ms, from_ms),
    ).fetchall():
        target = volume / path
        if target.exists() and target.stat().st_size > 0:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.unlink(missing_ok=True)
        os.link(reals[segment_id % len(reals)], target)
        made += 1
    return made


def ttfb(rows: int, reps: int) -> None:
    """Time to first byte 7 days back: clip.mp4 of 5 minutes, and of 1, 7 and 31
    days ending there; playback.m3u8 of 1 hour. Each on a freshly started daemon:
    its first request, then `reps` more. Every segment file of the clips' ranges is
    a link to one of the hour's real segments, which the rows describe; a clip
    plans from the first and last files and the index (and lists the directories
    between), and one byte of it is all that is read here."""
    reals = sorted((hour_of_video() / "recordings" / CAMERA).rglob("*.mp4"))
    volume = ttfb_index(rows, reals)
    conn = sqlite3.connect(volume / "recordings" / "index.db")
    last = conn.execute("SELECT max(end_ms) FROM segment WHERE camera = 'c042'").fetchone()[0]
    first = conn.execute(
        "SELECT start_ms FROM segment WHERE camera = 'c042' AND end_ms > ? ORDER BY start_ms LIMIT 1",
        (last - 7 * 86_400_000,),
    ).fetchone()[0]
    clip_from, clip_to = first + 10_000, first + 290_000
    day = 86_400_000
    requests = {
        "clip.mp4, 5 min": f"/api/v1/cameras/c042/clip.mp4?from={iso(clip_from)}&to={iso(clip_to)}",
        "playback.m3u8, 1 h": f"/api/v1/cameras/c042/playback.m3u8?from={iso(first)}&to={iso(first + 3_600_000)}",
    }
    for days in (1, 7, 31):
        requests[f"clip.mp4, {days} d"] = (
            f"/api/v1/cameras/c042/clip.mp4?from={iso(clip_to - days * day)}&to={iso(clip_to)}"
        )
    made = link_range(volume, conn, clip_to - 31 * day, clip_to, reals)
    conn.close()
    if made:
        print(f"  linked {made:,} segment files")
    cold = drop_page_cache()
    print(f"  time to first byte, 7 days back in a {rows:,}-row index, on a daemon started for each,"
          f" then {reps} requests:")
    print("    (first: the daemon's first request after one authenticated GET /api/v1/jobs, which pays the"
          " scrypt of Basic once;"
          f" {'page cache dropped before each start: from the disk' if cold else 'page cache NOT dropped (not root?): warm'})")
    for name, path in requests.items():
        directory = Path(tempfile.mkdtemp(prefix="nvrd-ttfb-", dir=WORK))
        if cold:
            drop_page_cache()
        proc, base = start_daemon(directory, volume)
        try:
            auth_ms, status = first_byte_ms(base, "/api/v1/jobs")
            assert status == 200, status
            samples = []
            for _ in range(reps + 1):
                ms, status = first_byte_ms(base, path)
                assert status == 200, (name, status)
                samples.append(ms)
        finally:
            stop(proc)  # type: ignore[arg-type]
            shutil.rmtree(directory, ignore_errors=True)
        print(f"    {name}: first {samples[0]:.1f} ms (auth before it {auth_ms:.0f} ms);"
              f" then median {statistics.median(samples[1:]):.1f} ms,"
              f" p95 {statistics.quantiles(samples[1:], n=20)[-1]:.1f} ms (target < 100 ms)")
    load = os.getloadavg()
    print(f"    load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench.playback")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--index-rows", type=int, default=10_000_000)
    parser.add_argument("--skip-export", action="store_true")
    parser.add_argument("--skip-ttfb", action="store_true")
    args = parser.parse_args(argv)
    print("playback:")
    if not args.skip_export:
        export_throughput(args.rounds)
    if not args.skip_ttfb:
        ttfb(args.index_rows, args.reps)


if __name__ == "__main__":
    sys.exit(main())
