"""The cameras and recordings REST API on the real app (no camera needs to answer)."""

from __future__ import annotations

import asyncio


async def test_camera_lifecycle_and_problems(client) -> None:
    body = {"id": "door", "url": "rtsp://nvr:s3cret@127.0.0.1:9/live", "enabled": False, "retention_days": 7}
    response = await client.post("/api/v1/cameras", json=body)
    assert response.status == 201
    camera = await response.json()
    assert response.headers["Location"] == "/api/v1/cameras/door"
    assert camera["url"] == "rtsp://127.0.0.1:9/live" and camera["username"] == "nvr"
    assert camera["has_password"] is True and "s3cret" not in await response.text()
    assert camera["state"] == "disabled"
    assert camera["created"].endswith("Z") and len(camera["created"]) == 24

    response = await client.post("/api/v1/cameras", json=body)
    assert response.status == 409 and (await response.json())["field"] == "id"

    response = await client.post("/api/v1/cameras", json={"id": "x", "url": "ftp://h/x"})
    problem = await response.json()
    assert response.status == 422 and problem["field"] == "url"
    assert response.headers["Content-Type"].startswith("application/problem+json")
    response = await client.post("/api/v1/cameras", json={"id": "x", "url": "rtsp://h/x", "segment_seconds": "60"})
    assert response.status == 422 and (await response.json())["field"] == "segment_seconds"

    response = await client.patch("/api/v1/cameras/door", json={"name": "Front door", "retention_days": None})
    assert response.status == 200
    patched = await response.json()
    assert patched["name"] == "Front door" and patched["retention_days"] is None and patched["has_password"]
    response = await client.patch("/api/v1/cameras/door", json={"enabled": None})
    assert response.status == 422 and (await response.json())["field"] == "enabled"
    assert (await client.patch("/api/v1/cameras/nope", json={"name": "x"})).status == 404

    listed = await (await client.get("/api/v1/cameras")).json()
    assert [c["id"] for c in listed] == ["door"] and "password" not in listed[0]

    response = await client.get("/api/v1/cameras/door/segments?from=yesterday")
    assert response.status == 422 and (await response.json())["field"] == "from"
    response = await client.get("/api/v1/cameras/door/segments?limit=0")
    assert response.status == 422 and (await response.json())["field"] == "limit"
    assert await (await client.get("/api/v1/cameras/door/segments")).json() == []
    assert (await client.get("/api/v1/cameras/nope/segments")).status == 404
    recordings = await (await client.get("/api/v1/recordings?camera=door&from=2026-01-01T00:00:00Z")).json()
    assert recordings["runs"] == [] and recordings["gaps"] == []
    response = await client.get("/api/v1/recordings?from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z")
    assert response.status == 422

    assert (await client.delete("/api/v1/cameras/door")).status == 204
    assert (await client.get("/api/v1/cameras/door")).status == 404


async def test_at_most_256_cameras(client) -> None:
    async def add(i: int) -> int:
        response = await client.post(
            "/api/v1/cameras", json={"id": f"c{i:03d}", "url": f"rtsp://127.0.0.1:9/{i}", "enabled": False}
        )
        return response.status

    statuses = await asyncio.gather(*(add(i) for i in range(256)))
    assert set(statuses) == {201}
    response = await client.post("/api/v1/cameras", json={"id": "one-more", "url": "rtsp://127.0.0.1:9/x"})
    assert response.status == 409 and (await response.json())["field"] == "id"
    assert len(await (await client.get("/api/v1/cameras")).json()) == 256
