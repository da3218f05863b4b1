"""SQLite databases: WAL mode, numbered migrations, and one worker thread each.

Each database (the device state here, the recordings index on the volume) is its own
module that hands its migrations to `Database`. Migration N is the N-th script;
`PRAGMA user_version` records how many have run, so a database written by a newer
nvrd is refused instead of being misread.

sqlite3 blocks, so every call runs on the database's own single worker thread: one
connection, no locking games, and the event loop never waits on the disk.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


class SchemaTooNew(Exception):
    def __init__(self, path: Path, found: int, known: int) -> None:
        super().__init__(f"{path}: schema version {found} is newer than this nvrd knows ({known})")


def connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    # NORMAL in WAL mode loses at most the last transactions on power loss, never
    # consistency; the recording index orders its own fsyncs where it matters.
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=5000")
    return conn


def migrate(conn: sqlite3.Connection, migrations: Sequence[str], path: Path) -> int:
    """Run the migrations not yet applied, each in its own transaction."""
    current = conn.execute("PRAGMA user_version").fetchone()[0]
    if current > len(migrations):
        raise SchemaTooNew(path, current, len(migrations))
    for number, script in enumerate(migrations[current:], start=current + 1):
        log.info("migrating %s to schema %d", path, number)
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _statements(script):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return len(migrations)


def _statements(script: str) -> list[str]:
    # executescript() would commit on its own; split so a migration stays atomic.
    statements, buffer = [], ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            statements.append(buffer.strip())
            buffer = ""
    if buffer.strip():
        statements.append(buffer.strip())
    return statements


class Database:
    """One SQLite file with its own worker thread. Use `await db.run(fn)`."""

    def __init__(self, path: Path, migrations: Sequence[str]) -> None:
        self.path = path
        self._migrations = migrations
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"db-{path.stem}")
        self._conn: sqlite3.Connection | None = None

    async def open(self) -> None:
        def _open() -> sqlite3.Connection:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = connect(self.path)
            try:
                migrate(conn, self._migrations, self.path)
            except BaseException:
                conn.close()
                raise
            return conn

        self._conn = await asyncio.get_running_loop().run_in_executor(self._executor, _open)

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._conn
        if conn is None:
            raise RuntimeError(f"{self.path} is not open")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, conn)

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, conn.close)
        self._executor.shutdown(wait=True)
