"""A finished export survives a restart of the daemon (an upgrade must not throw
away what an operator is about to hand over); one cut short by the stop does not
linger in the staging area."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nvrd.api.app import make_app

from ..conftest import ADMIN, ADMIN_PASSWORD, CHEAP_SCRYPT, basic
from .conftest import CAMERA, T0, iso
from .test_exports import PASSWORD, finished


async def test_finished_exports_are_taken_back_after_a_restart(
    played: Any, aiohttp_client: Any, config: Any, recording_volume: Path
) -> None:
    response = await played.post("/api/v1/exports", json={"camera": CAMERA, "from": iso(T0 + 5_000),
                                                           "to": iso(T0 + 25_000), "format": "mp4",
                                                           "password": PASSWORD})
    export = await finished(played, (await response.json())["id"])
    assert export["state"] == "succeeded", export
    before = await (await played.get(export["file"])).read()
    # What a stop in the middle of an export leaves: a directory, no manifest.
    unfinished = recording_volume / "exports" / "0123456789abcdef"
    unfinished.mkdir()
    (unfinished / f"{CAMERA}-half.mkv").write_bytes(b"\x1a\x45\xdf\xa3 cut short")
    await played.close()

    again = await aiohttp_client(
        make_app(config, scrypt=CHEAP_SCRYPT), headers={"Authorization": basic(ADMIN, ADMIN_PASSWORD)}
    )
    listed = await (await again.get("/api/v1/exports")).json()
    assert [e["id"] for e in listed] == [export["id"]]
    taken_back = listed[0]
    for key in ("camera", "from", "to", "format", "encrypted", "filename", "bytes", "expires", "created", "file"):
        assert taken_back[key] == export[key], key
    assert taken_back["state"] == "succeeded"
    response = await again.get(export["file"])
    assert response.status == 200
    assert await response.read() == before
    assert not unfinished.exists()
    # Deleting it still removes the file.
    assert (await again.delete(f"/api/v1/exports/{export['id']}")).status == 204
    assert not (recording_volume / "exports" / export["id"]).exists()
