"""GET /status, locate and the buzzer over the real app (directory mode: no disks, no LEDs)."""

from __future__ import annotations

from .conftest import basic


async def test_status_of_a_running_recorder(client) -> None:
    response = await client.get("/api/v1/status")
    assert response.status == 200
    status = await response.json()
    assert status["status"] == "ok" and status["reason"] is None
    assert status["leds"] == {"product": "green", "backend": "none", "slots": {}, "problems": []}
    assert status["storage"]["mode"] == "directory" and status["storage"]["volume"] == "ready"
    assert status["storage"]["free_bytes"] > 0
    assert status["recordings"] == {"cameras": 0, "recording": []}
    assert status["clients"] == {"event_streams": 0}
    assert status["buzzer"]["sounding"] is False and status["buzzer"]["alarm"] is None
    assert status["device"]["product"] == "nvrd"


async def test_status_counts_event_streams(client) -> None:
    stream = await client.get("/api/v1/events")
    await stream.content.readline()  # connected
    assert (await (await client.get("/api/v1/status")).json())["clients"]["event_streams"] == 1
    stream.close()


async def test_a_viewer_reads_status_but_neither_locates_nor_silences(client) -> None:
    response = await client.post("/api/v1/accounts", json={"name": "watcher", "password": "watch", "role": "viewer"})
    assert response.status == 201
    viewer = {"Authorization": basic("watcher", "watch")}
    assert (await client.get("/api/v1/status", headers=viewer)).status == 200
    assert (await client.post("/api/v1/system/buzzer/silence", headers=viewer)).status == 403
    assert (await client.post("/api/v1/storage/disks/1/locate", headers=viewer, json={"seconds": 5})).status == 403


async def test_silence_without_an_alarm(client) -> None:
    body = await (await client.post("/api/v1/system/buzzer/silence")).json()
    assert body == {"silenced": True, "was_sounding": False, "alarm": None}


async def test_locate_an_unknown_slot_is_404_and_seconds_are_checked(client) -> None:
    assert (await client.post("/api/v1/storage/disks/7/locate", json={"seconds": 5})).status == 404
    assert (await client.post("/api/v1/storage/disks/7/locate", json={"seconds": 99999})).status == 422
