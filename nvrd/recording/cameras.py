"""Camera settings: validated input, kept in the device database (/var/lib/nvrd).

A camera is `{id, name, url, username, password (write-only), transport, enabled,
retention_days, mode, segment_seconds, g711}` (design.md §5). Credentials may come
inside the URL (`rtsp://user:pass@host/path`); they are moved into username and
password so that the URL nvrd shows and logs never carries them. The password is
stored but never returned.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from typing import Annotated, Literal
from urllib.parse import unquote, urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from nvrd.db import Database
from nvrd.errors import Conflict, Invalid, NotFound
from nvrd.recording.ffmpeg import AudioPolicy, Source

MAX_CAMERAS = 256

# The camera id is a directory name on the volume and part of URLs: keep it plain.
CameraId = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")]
Name = Annotated[str, Field(min_length=1, max_length=100)]
Username = Annotated[str, Field(min_length=1, max_length=128)]
Password = Annotated[str, Field(min_length=1, max_length=128)]
RetentionDays = Annotated[int, Field(ge=1, le=3650)]
SegmentSeconds = Annotated[int, Field(ge=2, le=600)]
Transport = Literal["tcp", "udp"]
Mode = Literal["continuous"]
# JSON has no enums: accept the string (strict mode would want an AudioPolicy).
G711 = Annotated[AudioPolicy, Field(strict=False)]

# The `camera` table is device.py's migration 2.


def _check_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("rtsp", "rtsps"):
        raise ValueError("must be an rtsp:// or rtsps:// URL")
    if not parts.hostname:
        raise ValueError("has no host")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ValueError("has a bad port") from None
    if any(c.isspace() for c in url):
        raise ValueError("contains white space")
    return url


def split_credentials(url: str) -> tuple[str, str | None, str | None]:
    """`rtsp://u:p@h/x` → (`rtsp://h/x`, u, p)."""
    parts = urlsplit(url)
    if parts.username is None:
        return url, None, None
    host = parts.netloc.rsplit("@", 1)[1]
    clean = urlunsplit(parts._replace(netloc=host))
    password = unquote(parts.password) if parts.password is not None else None
    return clean, unquote(parts.username), password


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    @field_validator("url", check_fields=False)
    @classmethod
    def _url(cls, url: str | None) -> str | None:
        return None if url is None else _check_url(url)


class CameraCreate(_Input):
    id: CameraId
    name: Name | None = None
    url: Annotated[str, Field(max_length=2000)]
    username: Username | None = None
    password: Password | None = None
    transport: Transport = "tcp"
    enabled: bool = True
    retention_days: RetentionDays | None = None
    mode: Mode = "continuous"
    segment_seconds: SegmentSeconds = 60
    g711: G711 = AudioPolicy.AAC


class CameraPatch(_Input):
    name: Name | None = None
    url: Annotated[str, Field(max_length=2000)] | None = None
    username: Username | None = None
    password: Password | None = None
    transport: Transport | None = None
    enabled: bool | None = None
    retention_days: RetentionDays | None = None
    mode: Mode | None = None
    segment_seconds: SegmentSeconds | None = None
    g711: G711 | None = None


class Camera(BaseModel):
    """Stored settings (password included: never serialize this to a client)."""

    model_config = ConfigDict(frozen=True)

    id: str
    name: str
    url: str
    username: str | None = None
    password: str | None = None
    transport: Transport = "tcp"
    enabled: bool = True
    retention_days: int | None = None
    mode: Mode = "continuous"
    segment_seconds: int = 60
    g711: AudioPolicy = AudioPolicy.AAC
    created: datetime

    @property
    def source(self) -> Source:
        return Source(self.url, self.username, self.password, self.transport)

    def recording_settings(self) -> tuple[object, ...]:
        """What ffmpeg's command depends on: a change restarts the recorder."""
        return (self.url, self.username, self.password, self.transport, self.segment_seconds, self.g711)

    def public(self) -> dict[str, object]:
        data = self.model_dump(exclude={"password"})
        data["has_password"] = self.password is not None
        return data


def from_create(body: CameraCreate, now: datetime | None = None) -> Camera:
    url, user, password = split_credentials(body.url)
    return Camera(
        id=body.id,
        name=body.name or body.id,
        url=url,
        username=body.username or user,
        password=body.password or password,
        transport=body.transport,
        enabled=body.enabled,
        retention_days=body.retention_days,
        mode=body.mode,
        segment_seconds=body.segment_seconds,
        g711=body.g711,
        created=now or datetime.now(UTC),
    )


def apply_patch(camera: Camera, patch: CameraPatch) -> Camera:
    changes = patch.model_dump(exclude_unset=True)
    for key in ("name", "url", "transport", "enabled", "mode", "segment_seconds", "g711"):
        if key in changes and changes[key] is None:
            raise Invalid(f"{key}: may not be null", field=key)
    if "url" in changes:
        url, user, password = split_credentials(changes["url"])
        changes["url"] = url
        if user is not None:
            changes.setdefault("username", user)
            changes.setdefault("password", password)
    return camera.model_copy(update=changes)


class CameraStore:
    """Cameras in the device database. Loaded once; writes go through here."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def load(self) -> list[Camera]:
        def load(conn: sqlite3.Connection) -> list[Camera]:
            rows = conn.execute("SELECT settings FROM camera ORDER BY id").fetchall()
            return [Camera.model_validate_json(r[0]) for r in rows]

        return await self.db.run(load)

    async def create(self, camera: Camera) -> None:
        def create(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                if conn.execute("SELECT 1 FROM camera WHERE id = ?", (camera.id,)).fetchone():
                    raise Conflict(f"camera {camera.id!r} exists", field="id")
                if conn.execute("SELECT count(*) FROM camera").fetchone()[0] >= MAX_CAMERAS:
                    raise Conflict(f"at most {MAX_CAMERAS} cameras", field="id")
                conn.execute(
                    "INSERT INTO camera (id, settings, created) VALUES (?, ?, ?)",
                    (camera.id, camera.model_dump_json(), camera.created.isoformat()),
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

        await self.db.run(create)

    async def update(self, camera: Camera) -> None:
        def update(conn: sqlite3.Connection) -> None:
            cursor = conn.execute(
                "UPDATE camera SET settings = ? WHERE id = ?", (camera.model_dump_json(), camera.id)
            )
            if cursor.rowcount == 0:
                raise NotFound(f"no camera {camera.id!r}", camera=camera.id)

        await self.db.run(update)

    async def delete(self, camera_id: str) -> None:
        def delete(conn: sqlite3.Connection) -> None:
            if conn.execute("DELETE FROM camera WHERE id = ?", (camera_id,)).rowcount == 0:
                raise NotFound(f"no camera {camera_id!r}", camera=camera_id)

        await self.db.run(delete)

