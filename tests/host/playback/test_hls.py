"""playback.m3u8: a valid HLS playlist over the stored segments that ffmpeg plays
to the end, with discontinuities and program date-times at gaps."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from ..recording.conftest import index_rows
from .conftest import AUTH, CAMERA, T0, iso


async def play(url: str, *args: str) -> tuple[int, str, str]:
    headers = "".join(f"{k}: {v}\r\n" for k, v in AUTH.items())
    proc = await asyncio.create_subprocess_exec(
        "ffmpeg", "-hide_banner", "-v", "error", "-copyts", "-headers", headers, "-i", url, *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(), err.decode()


async def test_vod_playlist_plays_to_the_end_with_a_discontinuity_at_the_gap(
    played: Any, recording_volume: Path
) -> None:
    response = await played.delete("/api/v1/recordings", params={"camera": CAMERA, "from": iso(T0 + 59_000), "to": iso(T0 + 101_000)})
    assert (await response.json())["segments"] == 2
    start, end = T0 + 30_000, T0 + 150_000
    response = await played.get(f"/api/v1/cameras/{CAMERA}/playback.m3u8", params={"from": iso(start), "to": iso(end)})
    assert response.status == 200 and response.content_type == "application/vnd.apple.mpegurl"
    text = await response.text()
    lines = text.splitlines()
    rows = [r for r in index_rows(recording_volume) if r["end_ms"] > start and r["start_ms"] < end]
    assert [line for line in lines if line.endswith(".m4s")] == [f"hls/{r['id']}.m4s" for r in rows]
    assert lines[-1] == "#EXT-X-ENDLIST" and "#EXT-X-PLAYLIST-TYPE:VOD" in lines
    # One discontinuity, where the deleted segments were; a program date-time after it.
    gap_at = lines.index("#EXT-X-DISCONTINUITY")
    assert lines.count("#EXT-X-DISCONTINUITY") == 1
    after = next(r for r in rows if r["start_ms"] >= T0 + 100_000)
    assert f"#EXT-X-PROGRAM-DATE-TIME:{iso(after['start_ms'])}" in lines[gap_at:gap_at + 4]
    assert lines[gap_at + 1].startswith("#EXT-X-MAP:URI=")
    assert lines.count(f"#EXT-X-PROGRAM-DATE-TIME:{iso(rows[0]['start_ms'])}") == 1

    # ffmpeg plays it to the end, decoding every frame, over HTTP from the daemon.
    url = str(played.make_url(f"/api/v1/cameras/{CAMERA}/playback.m3u8?from={iso(start)}&to={iso(end)}"))
    rc, out, err = await play(url, "-map", "0:v:0", "-xerror", "-f", "framemd5", "-")
    assert rc == 0, err
    frames = [line for line in out.splitlines() if line and not line.startswith("#")]
    assert len(frames) == sum(r["frames"] for r in rows)
    # Timestamps are wall-clock time: the first frame is at the first segment's start.
    first_pts = int(frames[0].split(",")[2])
    timebase = next(line for line in out.splitlines() if line.startswith("#tb 0:")).split(":")[1].strip()
    num, den = (int(x) for x in timebase.split("/"))
    assert abs(first_pts * num / den * 1000 - rows[0]["start_ms"]) < 100


async def test_live_playlist_is_open(played: Any, recording_volume: Path) -> None:
    response = await played.get(f"/api/v1/cameras/{CAMERA}/playback.m3u8", params={"from": iso(T0 + 500_000)})
    text = await response.text()
    assert "#EXT-X-PLAYLIST-TYPE:EVENT" in text and "#EXT-X-ENDLIST" not in text
    # Everything from `from` to the newest segment (the growing is tested live in
    # test_concurrent.py).
    assert text.count(".m4s") == sum(1 for r in index_rows(recording_volume) if r["end_ms"] > T0 + 500_000)
