import sqlite3
from pathlib import Path

import pytest

from nvrd.db import Database, SchemaTooNew, connect, migrate

V1 = "CREATE TABLE a (x INTEGER);"
V2 = "ALTER TABLE a ADD COLUMN y TEXT;\nCREATE INDEX a_y ON a (y);"


def test_wal_mode(tmp_path: Path) -> None:
    conn = connect(tmp_path / "t.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_migrations_run_once_in_order(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    conn = connect(path)
    assert migrate(conn, [V1], path) == 1
    conn.execute("INSERT INTO a (x) VALUES (1)")
    assert migrate(conn, [V1, V2], path) == 2
    assert migrate(conn, [V1, V2], path) == 2  # nothing left to run
    assert [tuple(r) for r in conn.execute("SELECT x, y FROM a")] == [(1, None)]
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 2


def test_failed_migration_is_rolled_back(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    conn = connect(path)
    migrate(conn, [V1], path)
    with pytest.raises(sqlite3.OperationalError):
        migrate(conn, [V1, "CREATE TABLE b (x);\nSELECT * FROM missing;"], path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "b" not in tables


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    conn = connect(path)
    migrate(conn, [V1, V2], path)
    with pytest.raises(SchemaTooNew, match="newer"):
        migrate(conn, [V1], path)


async def test_database_runs_on_its_thread(tmp_path: Path) -> None:
    db = Database(tmp_path / "sub" / "t.db", [V1])
    await db.open()
    await db.run(lambda c: c.execute("INSERT INTO a (x) VALUES (7)"))
    assert await db.run(lambda c: c.execute("SELECT x FROM a").fetchone()[0]) == 7
    await db.close()
    reopened = connect(tmp_path / "sub" / "t.db")
    assert reopened.execute("SELECT count(*) FROM a").fetchone()[0] == 1
