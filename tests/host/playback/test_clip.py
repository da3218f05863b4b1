"""clip.mp4 over a ten-minute recording: where it starts, how long it is, that it
decodes, Range and ETag, gaps, and bad input."""

from __future__ import annotations

import random
import subprocess
from pathlib import Path
from typing import Any

from ..recording.conftest import index_rows
from .conftest import CAMERA, DURATION_S, FPS, GOP, T0, ffprobe, iso, packet_hashes

FRAME_S = 1 / FPS


async def fetch(client: Any, path: Path, start: int, end: int, headers: dict[str, str] | None = None) -> Any:
    response = await client.get(f"/api/v1/cameras/{CAMERA}/clip.mp4", params={"from": iso(start), "to": iso(end)},
                                headers=headers or {})
    with open(path, "wb") as f:
        async for chunk in response.content.iter_chunked(1 << 20):
            f.write(chunk)
    return response


async def test_ten_random_ranges_start_at_from_and_last_the_range(
    played: Any, tmp_path: Path, source_packets: list[tuple[float, str]], source_keyframes: list[float]
) -> None:
    where = {digest: pts for pts, digest in source_packets}
    assert len(where) == len(source_packets)  # every frame differs (noise): a hash finds its time
    rng = random.Random(5)
    for n in range(10):
        start = T0 + rng.randrange(-5_000, (DURATION_S - 10) * 1000)
        end = min(start + rng.randrange(2_000, 90_000), T0 + DURATION_S * 1000 + 5_000)
        path = tmp_path / f"clip{n}.mp4"
        response = await fetch(played, path, start, end)
        assert response.status == 200, await response.text()
        assert int(response.headers["Content-Length"]) == path.stat().st_size
        # It decodes, every frame (ffmpeg exits non-zero on a broken stream with -xerror).
        subprocess.run(["ffmpeg", "-v", "error", "-xerror", "-i", str(path), "-f", "null", "-"], check=True)
        packets = packet_hashes(path)
        # The first frame is the keyframe at or before `from`...
        starts_at = max(start, T0)
        first_src = where[packets[0][1]]
        keyframe = max(k for k in source_keyframes if k <= (starts_at - T0) / 1000 + 0.001)
        assert abs(first_src - keyframe) < 0.001, n
        # ...and the edit list makes playback start at `from`: the first frame shown
        # (timestamp 0 of the clip) is the source's frame at `from`, to within a frame.
        shown = next(digest for pts, digest in packets if pts >= -FRAME_S / 2)
        assert abs(T0 + where[shown] * 1000 - starts_at) <= 1000 * FRAME_S, n
        # The clip plays until `to`, within a GOP (it ends with the GOP holding `to`).
        video = ffprobe(path, "-show_entries", "stream=start_time,duration", "-select_streams", "v:0")["streams"][0]
        played_until = float(video["start_time"]) + float(video["duration"])
        wanted = (min(end, T0 + DURATION_S * 1000) - starts_at) / 1000
        assert abs(played_until - wanted) <= GOP * FRAME_S, (n, played_until, wanted)
        assert response.headers["Nvrd-Clip-From"] == iso(starts_at)


async def test_range_requests_and_etag(played: Any, tmp_path: Path) -> None:
    start, end = T0 + 33_333, T0 + 95_000  # across segment boundaries
    full_path = tmp_path / "full.mp4"
    response = await fetch(played, full_path, start, end)
    full = full_path.read_bytes()
    etag = response.headers["ETag"]
    assert response.headers["Accept-Ranges"] == "bytes"
    rng = random.Random(7)
    for _ in range(5):
        a = rng.randrange(0, len(full) - 1)
        b = rng.randrange(a, min(len(full), a + 3_000_000))
        part = await played.get(f"/api/v1/cameras/{CAMERA}/clip.mp4", params={"from": iso(start), "to": iso(end)},
                                headers={"Range": f"bytes={a}-{b}"})
        assert part.status == 206
        assert part.headers["Content-Range"] == f"bytes {a}-{b}/{len(full)}"
        assert part.headers["ETag"] == etag
        assert await part.read() == full[a : b + 1]
    tail = await played.get(f"/api/v1/cameras/{CAMERA}/clip.mp4", params={"from": iso(start), "to": iso(end)},
                            headers={"Range": "bytes=-1000"})
    assert tail.status == 206 and await tail.read() == full[-1000:]
    beyond = await played.get(f"/api/v1/cameras/{CAMERA}/clip.mp4", params={"from": iso(start), "to": iso(end)},
                              headers={"Range": f"bytes={len(full)}-"})
    assert beyond.status == 416 and beyond.headers["Content-Range"] == f"bytes */{len(full)}"
    head = await played.head(f"/api/v1/cameras/{CAMERA}/clip.mp4", params={"from": iso(start), "to": iso(end)})
    assert head.status == 200 and int(head.headers["Content-Length"]) == len(full) and head.headers["ETag"] == etag
    cached = await played.get(f"/api/v1/cameras/{CAMERA}/clip.mp4", params={"from": iso(start), "to": iso(end)},
                              headers={"If-None-Match": etag})
    assert cached.status == 304


async def test_gaps_are_played_across_and_reported(played: Any, tmp_path: Path, recording_volume: Path) -> None:
    # Delete 40 s in the middle: segments [60 s, 80 s) and [80 s, 100 s).
    response = await played.delete("/api/v1/recordings", params={"camera": CAMERA, "from": iso(T0 + 59_000), "to": iso(T0 + 101_000)})
    body = await response.json()
    assert body["segments"] == 2, body
    path = tmp_path / "gap.mp4"
    response = await fetch(played, path, T0 + 50_000, T0 + 110_000)
    assert response.status == 200
    gaps = response.headers["Nvrd-Gaps"]
    assert gaps.endswith(" deleted") and gaps.count("/") == 1, gaps
    # 60 s asked for, 40 s of it deleted: about 20 s of footage, either side, plays.
    video = ffprobe(path, "-show_entries", "stream=start_time,duration", "-select_streams", "v:0")["streams"][0]
    assert abs(float(video["start_time"]) + float(video["duration"]) - 20) <= GOP * FRAME_S
    # A file removed behind the index's back: the clip plays around it and says so.
    rows = [r for r in index_rows(recording_volume) if T0 + 100_000 <= r["start_ms"] < T0 + 110_000]
    (recording_volume / rows[0]["path"]).unlink()
    response = await fetch(played, path, T0 + 50_000, T0 + 140_000)
    assert response.status == 200
    assert response.headers["Nvrd-Gaps"].endswith(f"{iso(rows[0]['start_ms'])}/{iso(rows[0]['end_ms'])} missing")
    nothing = await played.get(f"/api/v1/cameras/{CAMERA}/clip.mp4", params={"from": iso(T0 + 65_000), "to": iso(T0 + 95_000)})
    assert nothing.status == 404
    assert nothing.content_type == "application/problem+json"


async def test_bad_input_names_the_field(played: Any) -> None:
    cases = [
        ({"from": iso(T0 + 10_000), "to": iso(T0)}, CAMERA, "from", 422),
        ({"from": iso(T0), "to": iso(T0 + 32 * 86_400_000)}, CAMERA, "to", 422),
        ({"from": "2026-11-24 10:00", "to": iso(T0 + 1000)}, CAMERA, "from", 422),
        ({"from": iso(T0), "to": "tomorrow"}, CAMERA, "to", 422),
        ({"to": iso(T0)}, CAMERA, "from", 422),
        ({"from": iso(T0), "to": iso(T0 + 10_000)}, "nobody", "camera", 404),
    ]
    for path in ("clip.mp4", "playback.m3u8"):
        for query, camera, field, status in cases:
            response = await played.get(f"/api/v1/cameras/{camera}/{path}", params=query)
            assert response.status == status, (path, query, await response.text())
            assert (await response.json())["field"] == field, (path, query)
