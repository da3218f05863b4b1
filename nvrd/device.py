"""The device's own state database (/var/lib/nvrd/device.db) and its identity.

Device settings live here, apart from the recordings: a factory reset clears this
directory and keeps the volume (design.md §3).
"""

from __future__ import annotations

import secrets
import socket
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from nvrd.db import Database

MIGRATIONS: list[str] = [
    # 1: key/value settings, including the device identity.
    """
    CREATE TABLE setting (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    """,
    # 2: accounts, API tokens, and the append-only audit log (issue 6).
    """
    CREATE TABLE account (
        name          TEXT PRIMARY KEY,
        role          TEXT NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
        password_hash TEXT NOT NULL,
        ha1_md5       TEXT NOT NULL,
        ha1_sha256    TEXT NOT NULL,
        realm         TEXT NOT NULL,
        created       TEXT NOT NULL,
        updated       TEXT NOT NULL
    );
    CREATE TABLE token (
        id          TEXT PRIMARY KEY,
        account     TEXT NOT NULL REFERENCES account (name) ON DELETE CASCADE,
        name        TEXT NOT NULL,
        secret_hash TEXT NOT NULL UNIQUE,
        created     TEXT NOT NULL,
        expires     TEXT
    );
    CREATE TABLE audit (
        id      INTEGER PRIMARY KEY AUTOINCREMENT,
        time    TEXT NOT NULL,
        account TEXT,
        address TEXT,
        action  TEXT NOT NULL,
        target  TEXT,
        result  TEXT NOT NULL,
        detail  TEXT
    );
    CREATE INDEX audit_time ON audit (time);
    CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
    CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
    """,
    # 3: cameras (nvrd/recording/cameras.py): settings as validated JSON, password
    # included (write-only over the API).
    """
    CREATE TABLE camera (
        id       TEXT PRIMARY KEY,
        settings TEXT NOT NULL,
        created  TEXT NOT NULL
    );
    """,
]

# Values that board vendors leave in DMI when they never set a serial.
_PLACEHOLDER_SERIALS = {
    "", "0", "none", "default string", "to be filled by o.e.m.", "system serial number",
    "not specified", "0123456789",
}


@dataclass(frozen=True)
class Identity:
    serial: str
    hostname: str


def hardware_serial(sysfs: Path = Path("/sys")) -> str | None:
    """The board's serial from DMI, or None where there is none worth showing."""
    try:
        serial = (sysfs / "class/dmi/id/product_serial").read_text().strip()
    except OSError:
        return None
    return None if serial.lower() in _PLACEHOLDER_SERIALS else serial


class DeviceState:
    def __init__(self, state_dir: Path, sysfs: Path = Path("/sys")) -> None:
        self.state_dir = state_dir
        self.db = Database(state_dir / "device.db", MIGRATIONS)
        self._sysfs = sysfs
        self.identity = Identity(serial="", hostname=socket.gethostname())

    async def open(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        await self.db.open()
        serial = await self.db.run(self._serial)
        self.identity = Identity(serial=serial, hostname=socket.gethostname())

    def _serial(self, conn: sqlite3.Connection) -> str:
        """The DMI serial, or one made up once and kept, so it never changes."""
        row = conn.execute("SELECT value FROM setting WHERE key = 'serial'").fetchone()
        if row is not None:
            return str(row["value"])
        serial = hardware_serial(self._sysfs) or "NVRD-" + secrets.token_hex(6).upper()
        conn.execute("INSERT INTO setting (key, value) VALUES ('serial', ?)", (serial,))
        return serial

    async def close(self) -> None:
        await self.db.close()
