"""What nvrd built on its disks, remembered in the device state: which array is
ours (by UUID), whether it is encrypted, which file system, and the volume's UUID.

The kernel says what *is*; this says what *should be*, so that at start-up nvrd
knows "its" array from a foreign one and a wrong volume from the right one.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import asdict, dataclass

from nvrd.db import Database

KEY = "storage.layout"


@dataclass(frozen=True)
class Layout:
    array_uuid: str
    level: int
    encrypted: bool
    filesystem: str
    volume_uuid: str
    write_protected: bool = False


async def load(db: Database) -> Layout | None:
    def _load(conn: sqlite3.Connection) -> Layout | None:
        row = conn.execute("SELECT value FROM setting WHERE key = ?", (KEY,)).fetchone()
        return Layout(**json.loads(row["value"])) if row else None

    return await db.run(_load)


async def save(db: Database, layout: Layout | None) -> None:
    def _save(conn: sqlite3.Connection) -> None:
        if layout is None:
            conn.execute("DELETE FROM setting WHERE key = ?", (KEY,))
        else:
            conn.execute(
                "INSERT INTO setting (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (KEY, json.dumps(asdict(layout))),
            )

    await db.run(_save)
