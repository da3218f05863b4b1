"""The real app through aiohttp's test client (real loopback HTTP)."""

from __future__ import annotations

import asyncio
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nvrd.api.keys import BUS, JOBS
from nvrd.jobs import JobContext

PROBLEM = "application/problem+json"


async def test_info_is_anonymous_and_complete(anon_client) -> None:
    response = await anon_client.get("/api/v1/info")
    assert response.status == 200
    info = await response.json()
    assert info["product"] == "nvrd"
    assert info["setup_required"] is True
    assert info["serial"] and info["hostname"] and info["version"]
    assert info["time"].endswith("Z")


async def test_serial_survives_restart(aiohttp_client, config) -> None:
    from nvrd.api.app import make_app

    from .conftest import CHEAP_SCRYPT

    first = await (await (await aiohttp_client(make_app(config, scrypt=CHEAP_SCRYPT))).get("/api/v1/info")).json()
    second = await (await (await aiohttp_client(make_app(config, scrypt=CHEAP_SCRYPT))).get("/api/v1/info")).json()
    assert first["serial"] == second["serial"]


async def test_unknown_paths_are_problem_404(client) -> None:
    for path in ("/", "/api/v1/nothing", "/api/v2/info", "/api/v1/jobs/abc/def", "/favicon.ico"):
        response = await client.get(path)
        assert response.status == 404, path
        assert response.content_type == PROBLEM
        body = await response.json()
        assert body["status"] == 404 and body["title"] == "Not Found"


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="?#%"), min_size=1, max_size=40))
async def test_any_unknown_path_is_problem_404(client, suffix) -> None:
    response = await client.get("/api/v1/zz-" + suffix)
    assert response.status in (404, 400)
    assert response.content_type == PROBLEM


async def test_wrong_method_is_problem_405_with_allow(client) -> None:
    response = await client.delete("/api/v1/info")
    assert response.status == 405
    assert response.content_type == PROBLEM
    assert "GET" in response.headers["Allow"]


async def test_broken_json_is_400_naming_json(client) -> None:
    response = await client.patch(
        "/api/v1/system/logging", data=b'{"level": ', headers={"Content-Type": "application/json"}
    )
    assert response.status == 400
    body = await response.json(content_type=PROBLEM)
    assert "not valid JSON" in body["detail"]


async def test_wrong_field_is_422_naming_it(client) -> None:
    response = await client.patch("/api/v1/system/logging", json={"level": "loud"})
    assert response.status == 422
    body = await response.json(content_type=PROBLEM)
    assert body["field"] == "level"
    response = await client.patch("/api/v1/system/logging", json={"level": "info", "colour": 1})
    body = await response.json(content_type=PROBLEM)
    assert response.status == 422 and body["field"] == "colour"


async def test_not_json_is_415(client) -> None:
    response = await client.patch("/api/v1/system/logging", data="level=info")
    assert response.status == 415
    assert response.content_type == PROBLEM


async def test_huge_body_is_413_and_app_goes_on(client) -> None:
    big = b"x" * (10 * 1024 * 1024)
    for path in ("/api/v1/system/logging", "/api/v1/info"):
        response = await client.patch(path, data=big, headers={"Content-Type": "application/json"})
        assert response.status in (413, 405), path
        assert response.content_type == PROBLEM
    assert (await client.get("/api/v1/info")).status == 200


async def test_log_level_change_takes_effect(client) -> None:
    import logging

    response = await client.patch("/api/v1/system/logging", json={"level": "debug", "levels": {"nvrd.x": "error"}})
    assert response.status == 200
    assert logging.getLogger().level == logging.DEBUG
    assert logging.getLogger("nvrd.x").level == logging.ERROR
    assert (await (await client.get("/api/v1/system/logging")).json())["level"] == "debug"


async def test_job_is_visible_while_running_and_after(client) -> None:
    release = asyncio.Event()

    async def work(ctx: JobContext) -> None:
        ctx.progress(0.5, "halfway")
        await release.wait()

    job = client.app[JOBS].submit("check", work, target="md0")
    await asyncio.sleep(0.01)
    running = await (await client.get(f"/api/v1/jobs/{job.id}")).json()
    assert running["state"] == "running" and running["progress"] == 0.5
    assert running["message"] == "halfway" and running["target"] == "md0"
    release.set()
    await client.app[JOBS].wait(job.id)
    done = await (await client.get(f"/api/v1/jobs/{job.id}")).json()
    assert done["state"] == "succeeded" and done["progress"] == 1.0 and done["finished"]
    listed = await (await client.get("/api/v1/jobs?kind=check")).json()
    assert [j["id"] for j in listed] == [job.id]


async def test_unknown_job_is_problem_404(client) -> None:
    response = await client.get("/api/v1/jobs/0000")
    assert response.status == 404
    body = await response.json(content_type=PROBLEM)
    assert body["type"] == "urn:nvrd:problem:not-found"


async def read_events(response, count: int) -> list[dict]:
    events, fields = [], {}
    while len(events) < count:
        line = (await asyncio.wait_for(response.content.readline(), 5)).decode().rstrip("\n")
        if line == "":
            if "data" in fields:
                events.append({**fields, "data": json.loads(fields["data"])})
            fields = {}
        elif not line.startswith(":"):
            key, _, value = line.partition(": ")
            fields[key] = value
    return events


async def test_events_stream_bus_events(client) -> None:
    response = await client.get("/api/v1/events?topics=storage")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    bus = client.app[BUS]
    bus.publish("job.changed", {"ignored": True})
    bus.publish("storage.changed", {"status": "degraded"})
    (event,) = await read_events(response, 1)
    assert event["event"] == "storage.changed"
    assert event["data"]["data"] == {"status": "degraded"}
    assert int(event["id"]) == event["data"]["seq"]
    response.close()


async def test_events_resume_after_last_event_id(client) -> None:
    bus = client.app[BUS]
    first = bus.publish("camera.changed", {"n": 1})
    bus.publish("camera.changed", {"n": 2})
    bus.publish("camera.changed", {"n": 3})
    response = await client.get("/api/v1/events", headers={"Last-Event-ID": str(first.seq)})
    events = await read_events(response, 2)
    assert [e["data"]["data"]["n"] for e in events] == [2, 3]
    response.close()


async def test_events_bad_last_event_id_is_422(client) -> None:
    response = await client.get("/api/v1/events", headers={"Last-Event-ID": "abc"})
    assert response.status == 422


async def test_openapi_json_is_served(client) -> None:
    response = await client.get("/api/v1/openapi.json")
    assert response.status == 200
    spec = await response.json()
    assert spec["openapi"].startswith("3.") and "/api/v1/info" in spec["paths"]
