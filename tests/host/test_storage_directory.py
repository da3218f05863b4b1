"""Directory mode: the same read API as managed storage; RAID tools answer 409."""

from __future__ import annotations

from pathlib import Path

from nvrd.api.app import make_app
from nvrd.config import Config, DaemonConfig, HttpConfig, StorageConfig

from .conftest import ADMIN, ADMIN_PASSWORD, CHEAP_SCRYPT, basic

PROBLEM = "application/problem+json"


async def test_directory_mode_tools_answer_409(aiohttp_client, tmp_path: Path) -> None:
    config = Config(
        daemon=DaemonConfig(state_dir=tmp_path / "state"),
        storage=StorageConfig(mode="directory", directory=tmp_path / "volume"),
        http=HttpConfig(listen="127.0.0.1", http_port=0, https_port=0),
    )
    client = await aiohttp_client(
        make_app(config, scrypt=CHEAP_SCRYPT), headers={"Authorization": basic(ADMIN, ADMIN_PASSWORD)}
    )
    await client.post("/api/v1/setup", json={"username": ADMIN, "password": ADMIN_PASSWORD})
    response = await client.post("/api/v1/storage/check")
    assert response.status == 409
    assert "directory mode" in (await response.json(content_type=PROBLEM))["detail"]
    state = await (await client.get("/api/v1/storage")).json()
    assert state["mode"] == "directory" and state["raid"] is None and state["free_bytes"] > 0
