"""Exports expire after `[exports] expire_after_hours`: the file and the entry go.
(A module of its own: its config makes every export here expire in a second.)"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from nvrd.config import ExportsConfig

from .conftest import CAMERA, T0, iso
from .test_exports import finished


@pytest.fixture
def config(config: Any) -> Any:
    """Exports expire after about a second here."""
    return config.model_copy(update={"exports": ExportsConfig(expire_after_hours=1 / 3600)})


async def test_exports_expire(played: Any, recording_volume: Path) -> None:
    response = await played.post("/api/v1/exports", json={"camera": CAMERA, "from": iso(T0), "to": iso(T0 + 5_000)})
    export = await finished(played, (await response.json())["id"])
    assert export["state"] == "succeeded"
    assert list((recording_volume / "exports").iterdir())
    await asyncio.sleep(1.5)
    assert (await played.get(f"/api/v1/exports/{export['id']}")).status == 404
    assert not list((recording_volume / "exports").iterdir())
