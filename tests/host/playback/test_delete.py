"""DELETE /recordings: whole segments inside the range go, crash-safe; the hole is
a `deleted` gap; viewers may not delete; it is audited."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..conftest import basic
from ..recording.conftest import index_rows, volume_files
from .conftest import CAMERA, SEGMENT_S, T0, iso


async def test_delete_a_range_leaves_a_deleted_gap(played: Any, recording_volume: Path) -> None:
    rows = index_rows(recording_volume)
    assert len(rows) == 30
    # From inside segment 5 to inside segment 9: segments 6, 7, 8 lie wholly inside.
    start, end = rows[5]["start_ms"] + 100, rows[9]["start_ms"] + 100
    doomed = {r["path"] for r in rows[6:9]}

    viewer = {"Authorization": basic("watcher", "watcher password")}
    response = await played.post("/api/v1/accounts", json={"name": "watcher", "password": "watcher password", "role": "viewer"})
    assert response.status == 201, await response.text()
    query = {"camera": CAMERA, "from": iso(start), "to": iso(end)}
    response = await played.delete("/api/v1/recordings", params=query, headers=viewer)
    assert response.status == 403
    assert len(index_rows(recording_volume)) == 30

    response = await played.delete("/api/v1/recordings", params=query)
    assert response.status == 200, await response.text()
    body = await response.json()
    assert body["segments"] == 3 and body["start"] == iso(rows[6]["start_ms"]) and body["end"] == iso(rows[8]["end_ms"])
    left = index_rows(recording_volume)
    assert {r["path"] for r in left} == {r["path"] for r in rows} - doomed
    assert volume_files(recording_volume) == {r["path"] for r in left}

    response = await played.get("/api/v1/recordings", params={"camera": CAMERA, "from": iso(T0), "to": iso(T0 + 700_000)})
    recordings = await response.json()
    assert [(g["start"], g["end"], g["reason"]) for g in recordings["gaps"]] == [
        (iso(rows[5]["end_ms"]), iso(rows[9]["start_ms"]), "deleted")
    ]
    assert [r["segments"] for r in recordings["runs"]] == [6, 21]

    # Nothing inside: nothing deleted. Deleting twice is harmless.
    response = await played.delete("/api/v1/recordings", params=query)
    assert (await response.json())["segments"] == 0

    response = await played.get("/api/v1/logs/audit")
    records = [r for r in await response.json() if r["action"] == "delete-recordings"]
    assert [(r["account"], r["result"]) for r in records] == [("admin", "ok"), ("admin", "ok")]
    assert records[0]["target"].startswith(CAMERA)


async def test_bad_delete_requests_name_the_field(played: Any) -> None:
    cases = [
        ({"from": iso(T0), "to": iso(T0 + 1000)}, "camera", 422),
        ({"camera": CAMERA, "to": iso(T0 + 1000)}, "from", 422),
        ({"camera": CAMERA, "from": "yesterday", "to": iso(T0)}, "from", 422),
        ({"camera": CAMERA, "from": iso(T0 + 1000), "to": iso(T0)}, "from", 422),
        ({"camera": CAMERA, "from": iso(T0), "to": iso(T0 + 32 * 86_400_000)}, "to", 422),
        ({"camera": "nobody", "from": iso(T0), "to": iso(T0 + SEGMENT_S * 1000)}, "camera", 404),
    ]
    for query, field, status in cases:
        response = await played.delete("/api/v1/recordings", params=query)
        assert response.status == status, (query, await response.text())
        assert (await response.json())["field"] == field, query
