"""Playback: GET /cameras/{id}/clip.mp4 (one MP4 for any range, with Range and
ETag) and /cameras/{id}/playback.m3u8 (HLS over the stored segments, VOD or live),
with the HLS init and media segments the playlist names. The recorder plans them
(nvrd/recording/playback.py); this module only translates HTTP."""

from __future__ import annotations

import asyncio

from aiohttp import web

from nvrd.api.keys import RECORDER
from nvrd.api.recordings import explicit_range
from nvrd.api.roles import Role, requires
from nvrd.errors import NotFound
from nvrd.recording.playback import Clip, gaps_header, iso

routes = web.RouteTableDef()

HLS_PLAYLIST = "application/vnd.apple.mpegurl"


async def stream(request: web.Request, clip: Clip, content_type: str, headers: dict[str, str]) -> web.StreamResponse:
    """Send the clip, or the Range of it asked for (one range), reading the files as
    it goes. 304 for a matching If-None-Match; If-Range with another ETag gets it all."""
    size = clip.size
    headers = {"Accept-Ranges": "bytes", "Cache-Control": "private, no-cache", **headers, "ETag": clip.etag}
    matches = [tag.strip() for tag in request.headers.get("If-None-Match", "").split(",")]
    if clip.etag in matches or "*" in matches:
        return web.Response(status=304, headers=headers)
    start, end, status = 0, size, 200
    if_range = request.headers.get("If-Range")
    if "Range" in request.headers and (if_range is None or if_range == clip.etag):
        try:
            wanted = request.http_range
        except ValueError:
            wanted = None
        if wanted is not None:
            if wanted.start is not None and wanted.start < 0:  # bytes=-N: the last N
                start, end = max(0, size + wanted.start), size
            else:
                start = wanted.start or 0
                end = size if wanted.stop is None else min(wanted.stop, size)
        if wanted is None or start >= size or start >= end:
            raise web.HTTPRequestRangeNotSatisfiable(headers={"Content-Range": f"bytes */{size}"})
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    response = web.StreamResponse(status=status, headers=headers)
    response.content_type = content_type
    response.content_length = end - start
    await response.prepare(request)
    if request.method != "HEAD":
        chunks = clip.read(start, end)
        while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
            await response.write(chunk)
    await response.write_eof()
    return response


@routes.get("/api/v1/cameras/{id}/clip.mp4")
@requires(Role.VIEWER)
async def get_clip(request: web.Request) -> web.StreamResponse:
    from_ms, to_ms = explicit_range(request)
    assert to_ms is not None
    clip = await request.app[RECORDER].clip(request.match_info["id"], from_ms, to_ms)
    headers = {
        "Nvrd-Gaps": gaps_header(clip.gaps),
        "Nvrd-Clip-Start": iso(clip.start_ms),
        "Nvrd-Clip-From": iso(clip.from_ms),
        "Content-Disposition": f'inline; filename="{request.match_info["id"]}-{iso(clip.from_ms)}.mp4"',
    }
    if clip.stopped_early_ms is not None:
        headers["Nvrd-Clip-End"] = iso(clip.stopped_early_ms)
    return await stream(request, clip, "video/mp4", headers)


@routes.get("/api/v1/cameras/{id}/playback.m3u8")
@requires(Role.VIEWER)
async def get_playlist(request: web.Request) -> web.Response:
    from_ms, to_ms = explicit_range(request, to_optional=True)
    text = await request.app[RECORDER].playlist(request.match_info["id"], from_ms, to_ms)
    return web.Response(text=text, content_type=HLS_PLAYLIST, headers={"Cache-Control": "no-cache"})


def _segment_id(request: web.Request) -> int:
    raw = request.match_info["segment"]
    if not raw.isdigit():
        raise NotFound(f"no segment {raw!r}", segment=raw)
    return int(raw)


@routes.get("/api/v1/cameras/{id}/hls/{segment}.m4s")
@requires(Role.VIEWER)
async def get_hls_segment(request: web.Request) -> web.StreamResponse:
    clip = await request.app[RECORDER].hls_segment(request.match_info["id"], _segment_id(request))
    return await stream(request, clip, "video/iso.segment", {"Cache-Control": "private, max-age=86400"})


@routes.get("/api/v1/cameras/{id}/hls/{segment}/init.mp4")
@requires(Role.VIEWER)
async def get_hls_init(request: web.Request) -> web.Response:
    init = await request.app[RECORDER].hls_init(request.match_info["id"], _segment_id(request))
    return web.Response(body=init, content_type="video/mp4", headers={"Cache-Control": "private, max-age=86400"})
