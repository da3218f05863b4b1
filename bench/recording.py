"""Recording at scale, and the index at scale.

1. N cameras at 4 Mbit/s 1080p15 (one pre-encoded clip, served to all by one shared
   GStreamer RTSP server on 127.0.0.1), recorded twice:
   - baseline: N plain ffmpeg segment recorders, the same ffmpeg arguments nvrd uses
     minus the segment list (so the ratio is what nvrd adds);
   - nvrd: the daemon as a process with N cameras added over REST.
   For each: CPU % of one core per stream (nvrd + its ffmpeg children, and nvrd's
   own process apart), PSS MB per stream, and frames lost, over a measurement
   window after a warm-up. Frames lost = frames the segments' own durations call
   for (15 fps) minus frames they hold, plus any restarts in the window.
2. The index at 10 million synthetic segment rows: start-up reconciliation time,
   and GET /recordings for one camera over 30 days.

`python -m bench.recording --cameras 16 64 128` chooses N; `make bench` runs N=16
(the machine is shared); the figures in docs/benchmarks.md say which N they are.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

TOP = Path(__file__).resolve().parents[1]
WORK = TOP / "build" / "bench"
CLK_TCK = os.sysconf("SC_CLK_TCK")
SEGMENT_S = 10
FPS = 15


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clip_1080p() -> Path:
    """4 Mbit/s 1080p15, GOP 2 s, 10 minutes (one minute encoded, then looped by copy)."""
    final = WORK / "clips" / "1080p15-4m-600s.mkv"
    if final.exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    minute = final.with_name("1080p15-4m-60s.mkv")
    print("bench: encoding the 1080p clip once (about a minute)...", flush=True)
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi",
         "-i", "testsrc2=size=1920x1080:rate=15,noise=alls=12:allf=t", "-t", "60",
         "-c:v", "libx264", "-preset", "ultrafast", "-b:v", "4M", "-minrate", "4M", "-maxrate", "4M",
         "-bufsize", "2M", "-g", "30", "-bf", "0", str(minute)],
        check=True,
    )
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-stream_loop", "9", "-i", str(minute),
                    "-c", "copy", str(final)], check=True)
    return final


class Server:
    def __init__(self, clip: Path) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            ["/usr/bin/python3", str(TOP / "tools" / "test-camera"), "--port", str(self.port), "--shared",
             "--mount", f"/cam={clip}"],
            stdout=subprocess.PIPE, text=True,
        )
        assert self.proc.stdout
        line = self.proc.stdout.readline()
        if '"ready"' not in line:
            raise RuntimeError(f"test camera did not start: {line!r}")

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}/cam"

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def pss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def measure(pids_of: callable, window: float) -> tuple[dict[int, float], float]:  # type: ignore[valid-type]
    pids = pids_of()
    before = {p: cpu_seconds(p) for p in pids}
    started = time.monotonic()
    time.sleep(window)
    elapsed = time.monotonic() - started
    after = {p: cpu_seconds(p) for p in pids}
    return {p: (after[p] - before[p]) / elapsed * 100 for p in pids}, elapsed


def lost_frames_in(files: list[Path]) -> tuple[int, int]:
    """(frames held, frames lost) over closed segment files."""
    sys.path.insert(0, str(TOP))
    from nvrd.recording.mp4 import inspect

    held = lost = 0
    for f in files:
        try:
            info = inspect(f)
        except Exception:  # noqa: BLE001
            continue
        held += info.frames
        lost += max(0, round(info.video_seconds * FPS) - info.frames)
    return held, lost


def ffmpeg_args(url: str, pattern: str) -> list[str]:
    sys.path.insert(0, str(TOP))
    from nvrd.recording.ffmpeg import AudioPolicy, Source, record_command

    argv = record_command(Source(url), Path(pattern), SEGMENT_S, None, AudioPolicy.AAC)
    i = argv.index("-segment_list")
    del argv[i : i + 4]  # the list and its type: nvrd's only addition
    return argv


def run_baseline(n: int, url: str, warmup: float, window: float) -> dict[str, float]:
    directory = Path(tempfile.mkdtemp(prefix="baseline-", dir=WORK))
    procs = []
    try:
        for i in range(n):
            (directory / f"c{i}").mkdir()
            procs.append(subprocess.Popen(ffmpeg_args(url, str(directory / f"c{i}" / "%06d.mp4")),
                                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL))
        time.sleep(warmup)
        marker = time.time()
        cpu, _ = measure(lambda: [p.pid for p in procs], window)
        pss = sum(pss_mb(p.pid) for p in procs)
        restarts = sum(1 for p in procs if p.poll() is not None)
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(30)
        # Segments wholly inside the window (opened after it began, closed before the stop).
        files = [f for f in directory.rglob("*.mp4") if f.stat().st_ctime >= marker + SEGMENT_S]
        files = [f for f in files if f.stat().st_mtime <= marker + window]
        held, lost = lost_frames_in(files)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        shutil.rmtree(directory, ignore_errors=True)
    return {"cpu": sum(cpu.values()), "pss": pss, "held": held, "lost": lost + restarts, "restarts": restarts}


# The daemon's first administrator, made by start_nvrd; Basic is accepted from loopback.
ADMIN = ("admin", "bench password 1")
AUTH = {"Authorization": "Basic " + base64.b64encode(":".join(ADMIN).encode()).decode()}


def api(base: str, method: str, path: str, body: object = None) -> tuple[int, object]:
    data = json.dumps(body).encode() if body is not None else None
    headers = {**AUTH, "Content-Type": "application/json"} if data else dict(AUTH)
    req = urllib.request.Request(base + path, data=data, method=method, headers=headers)
    with urllib.request.urlopen(req, timeout=30) as response:
        raw = response.read()
        return response.status, json.loads(raw) if raw else None


def start_nvrd(directory: Path, volume: Path) -> tuple[subprocess.Popen[bytes], str, Path]:
    port = free_port()
    config = directory / "nvrd.toml"
    config.write_text(
        f'[daemon]\nstate_dir = "{directory / "state"}"\n[log]\nlevel = "info"\n'
        f'[storage]\nmode = "directory"\ndirectory = "{volume}"\n'
        f'[http]\nlisten = "127.0.0.1"\nhttp_port = {port}\nhttps_port = 0\n'
    )
    log = directory / "nvrd.log"
    proc = subprocess.Popen([sys.executable, "-m", "nvrd.daemon", "--config", str(config)],
                            stderr=open(log, "ab"), cwd=TOP)
    deadline = time.monotonic() + 300
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nvrd did not start; see {log}") from None
            time.sleep(0.05)
    base = f"http://127.0.0.1:{port}"
    api(base, "POST", "/api/v1/setup", {"username": ADMIN[0], "password": ADMIN[1]})
    return proc, base, log


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()


def run_nvrd(n: int, url: str, warmup: float, window: float) -> dict[str, float]:
    directory = Path(tempfile.mkdtemp(prefix="nvrd-", dir=WORK))
    volume = directory / "volume"
    proc, base, _log = start_nvrd(directory, volume)
    try:
        for i in range(n):
            api(base, "POST", "/api/v1/cameras", {"id": f"c{i:03d}", "url": url, "segment_seconds": SEGMENT_S})
        time.sleep(warmup)
        # segment.closed events, as /events carries them: retention may delete files
        # (the floor on this disk), the events stay.
        events: list[dict] = []
        stream = threading.Thread(target=_collect_segments, args=(base, events), daemon=True)
        stream.start()
        window_start_ms = time.time_ns() // 1_000_000
        cpu, _ = measure(lambda: [proc.pid, *children(proc.pid)], window)
        window_end_ms = time.time_ns() // 1_000_000
        pss_nvrd = pss_mb(proc.pid)
        pss = pss_nvrd + sum(pss_mb(p) for p in children(proc.pid))
        time.sleep(SEGMENT_S + 3)
        inside = [e for e in events if e["start_ms"] >= window_start_ms and e["end_ms"] <= window_end_ms]
        held = sum(e["frames"] for e in inside)
        lost = sum(max(0, round((e["end_ms"] - e["start_ms"]) * FPS / 1000) - e["frames"]) for e in inside)
        runs: dict[str, set[int]] = {}
        for e in inside:
            runs.setdefault(e["camera"], set()).add(e["run"])
        runs_started = sum(len(r) - 1 for r in runs.values())
        rows = inside
        own = cpu.pop(proc.pid)
    finally:
        stop(proc)
        shutil.rmtree(directory, ignore_errors=True)
    return {"cpu": own + sum(cpu.values()), "own": own, "pss": pss, "pss_own": pss_nvrd, "held": held,
            "lost": lost + runs_started, "restarts": runs_started, "segments": len(rows)}


def _collect_segments(base: str, into: list[dict]) -> None:
    from datetime import datetime

    def ms(text: str) -> int:
        return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)

    events = urllib.request.Request(base + "/api/v1/events?topics=segment", headers=AUTH)
    with urllib.request.urlopen(events, timeout=600) as response:
        for raw in response:
            line = raw.decode()
            if not line.startswith("data: "):
                continue
            data = json.loads(line[6:])["data"]
            into.append({"camera": data["camera"], "run": data["run"], "frames": data["frames"],
                         "start_ms": ms(data["start"]), "end_ms": ms(data["end"])})


def streams(counts: list[int], warmup: float, window: float) -> None:
    WORK.mkdir(parents=True, exist_ok=True)
    clip = clip_1080p()
    print(f"recording: {SEGMENT_S} s segments, 1080p15 at 4 Mbit/s, warm-up {warmup:.0f} s, window {window:.0f} s")
    for n in counts:
        server = Server(clip)
        try:
            base = run_baseline(n, server.url, warmup, window)
            time.sleep(3)
            mine = run_nvrd(n, server.url, warmup, window)
        finally:
            server.stop()
        print(f"  N={n}:")
        print(f"    baseline ffmpeg: {base['cpu'] / n:.2f} % of a core per stream, {base['pss'] / n:.1f} MB PSS per stream,"
              f" frames lost {base['lost']} of {base['held']}")
        print(f"    nvrd + children: {mine['cpu'] / n:.2f} % per stream, {mine['pss'] / n:.1f} MB PSS per stream,"
              f" frames lost {mine['lost']} of {mine['held']} ({mine['segments']} segments)")
        print(f"    nvrd's own process: {mine['own']:.1f} % of a core in all ({mine['own'] / n:.3f} % per stream),"
              f" {mine['pss_own']:.0f} MB PSS")
        print(f"    ratio nvrd+children / baseline CPU: {mine['cpu'] / base['cpu']:.3f} (target <= 1.15)")


def build_index(path: Path, rows: int, cameras: int, segment_s: int = 60, media: Any = None) -> None:
    """A synthetic index: `cameras` cameras of back-to-back 60 s segments ending now,
    with an offline gap of 30 s every 6 hours. `media` (an fmp4.Media) is what
    every row says of its file's fragments, as the recorder records at commit (the
    playback bench's files are links to one real segment); None leaves it NULL, as
    in rows indexed before schema 2."""
    sys.path.insert(0, str(TOP))
    from nvrd.db import connect, migrate
    from nvrd.recording.index import MIGRATIONS

    path.parent.mkdir(parents=True, exist_ok=True)
    conn = connect(path)
    migrate(conn, MIGRATIONS, path)
    conn.execute("PRAGMA foreign_keys=OFF")  # runs are written after their segments
    for name in ("segment_camera_start", "segment_start", "segment_run"):
        conn.execute(f"DROP INDEX {name}")
    per_camera = rows // cameras
    now_ms = (time.time_ns() // 1_000_000) // 60_000 * 60_000
    first_ms = now_ms - per_camera * segment_s * 1000 - (per_camera // 360) * 30_000
    described = (media.offset, media.bytes, media.fragments, media.last_start_ms, media.layout) if media else (None,) * 5
    insert = ("INSERT INTO segment (camera, run_id, start_ms, end_ms, bytes, frames, keyframes, codec, audio, path,"
              " media_offset, media_bytes, fragments, last_fragment_ms, layout) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)")
    conn.execute("BEGIN")
    run_id = 0
    for c in range(cameras):
        camera = f"c{c:03d}"
        t = first_ms
        batch = []
        run_start = t
        run_id += 1
        run_rows = [(run_id, camera, t)]
        seg_in_run = 0
        run_bytes = 0
        for i in range(per_camera):
            if seg_in_run == 360:  # a 30 s offline gap every 6 hours
                conn.execute("INSERT INTO run VALUES (?,?,?,?,?,?,?)",
                             (run_id, camera, run_start, t, run_bytes, seg_in_run, "offline"))
                t += 30_000
                run_id += 1
                run_start, seg_in_run, run_bytes = t, 0, 0
            end = t + segment_s * 1000
            day = time.strftime("%Y-%m-%d/%H", time.gmtime(t / 1000))
            batch.append((camera, run_id, t, end, 30_000_000, 900, 30, "h264", "aac",
                          f"recordings/{camera}/{day}/{t}-{c}-{i:06d}.mp4", *described))
            run_bytes += 30_000_000
            seg_in_run += 1
            t = end
            if len(batch) >= 50_000:
                conn.executemany(insert, batch)
                batch = []
        if batch:
            conn.executemany(insert, batch)
        conn.execute("INSERT INTO run VALUES (?,?,?,?,?,?,?)",
                     (run_id, camera, run_start, t, run_bytes, seg_in_run, "offline"))
    conn.execute("COMMIT")
    conn.execute("CREATE INDEX segment_camera_start ON segment (camera, start_ms)")
    conn.execute("CREATE INDEX segment_start ON segment (start_ms)")
    conn.execute("CREATE INDEX segment_run ON segment (run_id, start_ms)")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def touch_tail(volume: Path) -> int:
    """Empty files for each camera's newest hour: what start-up reconciliation reads."""
    conn = sqlite3.connect(volume / "recordings" / "index.db")
    made = 0
    for (camera,) in conn.execute("SELECT DISTINCT camera FROM run").fetchall():
        last = conn.execute("SELECT max(start_ms) FROM segment WHERE camera = ?", (camera,)).fetchone()[0]
        since = last // 3_600_000 * 3_600_000
        for (p,) in conn.execute("SELECT path FROM segment WHERE camera = ? AND start_ms >= ?", (camera, since)):
            f = volume / p
            f.parent.mkdir(parents=True, exist_ok=True)
            f.touch()
            made += 1
    conn.close()
    return made


def index_at_scale(rows: int, cameras: int) -> None:
    volume = WORK / f"index-{rows}" / "volume"
    db = volume / "recordings" / "index.db"
    if not db.exists():
        started = time.monotonic()
        build_index(db.with_suffix(".part"), rows, cameras)
        db.with_suffix(".part").rename(db)
        print(f"  built a {rows:,}-row index in {time.monotonic() - started:.0f} s (cached in {db.parent})")
    touched = touch_tail(volume)
    directory = Path(tempfile.mkdtemp(prefix="nvrd-index-", dir=WORK))
    started = time.monotonic()
    proc, base, log = start_nvrd(directory, volume)
    to_listen = time.monotonic() - started
    try:
        reconciled = re.findall(r"checked in ([0-9.]+) s|'seconds': ([0-9.]+)", log.read_text())
        recon_s = next((float(a or b) for a, b in reversed(reconciled)), float("nan"))
        conn = sqlite3.connect(db)
        last = conn.execute("SELECT max(end_ms) FROM segment WHERE camera = 'c042'").fetchone()[0]
        conn.close()
        to = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(last / 1000))
        frm = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(last / 1000 - 30 * 86400))
        latencies = []
        for _ in range(50):
            t = time.perf_counter()
            status, body = api(base, "GET", f"/api/v1/recordings?camera=c042&from={frm}&to={to}")
            latencies.append((time.perf_counter() - t) * 1000)
            assert status == 200
        seg_lat = []
        hour_ago = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(last / 1000 - 3600))
        for _ in range(50):
            t = time.perf_counter()
            api(base, "GET", f"/api/v1/cameras/c042/segments?from={hour_ago}&to={to}")
            seg_lat.append((time.perf_counter() - t) * 1000)
    finally:
        stop(proc)
        shutil.rmtree(directory, ignore_errors=True)
    print(f"  index: {rows:,} segment rows, {cameras} cameras, {db.stat().st_size / 2**30:.2f} GiB")
    print(f"    start-up reconciliation: {recon_s:.2f} s ({touched} tail files checked; target < 10 s);"
          f" start to listening {to_listen:.2f} s")
    print(f"    GET /recordings one camera, 30 days ({len(body['runs'])} runs, {len(body['gaps'])} gaps):"
          f" median {statistics.median(latencies):.1f} ms, p95 {statistics.quantiles(latencies, n=20)[-1]:.1f} ms"
          " (target < 50 ms)")
    print(f"    GET /cameras/c042/segments, one hour: median {statistics.median(seg_lat):.1f} ms")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench.recording")
    parser.add_argument("--cameras", type=int, nargs="*", default=[16])
    parser.add_argument("--warmup", type=float, default=20)
    parser.add_argument("--window", type=float, default=60)
    parser.add_argument("--index-rows", type=int, default=10_000_000)
    parser.add_argument("--skip-streams", action="store_true")
    parser.add_argument("--skip-index", action="store_true")
    args = parser.parse_args(argv)
    print("recording:")
    if not args.skip_streams and args.cameras:
        streams(args.cameras, args.warmup, args.window)
    if not args.skip_index:
        index_at_scale(args.index_rows, 128)


if __name__ == "__main__":
    main()
