"""The audit log: every change, with time, account, address, action, target, result.

It lives in the device database (table `audit`, migration 2). Triggers refuse
UPDATE and DELETE, so nothing in nvrd (and no API) can rewrite history; only a
factory reset, which removes the whole database, clears it.

The API records every request that can change something (POST, PUT, PATCH,
DELETE) that reached a handler, successful or not, so a new endpoint is audited
without having to remember to; services may record more through `record`.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime

from nvrd.db import Database

MAX_QUERY = 10_000


@dataclass(frozen=True)
class Actor:
    """Who asked for a change: an account (None before login) and an address."""

    account: str | None
    address: str | None


@dataclass(frozen=True)
class AuditRecord:
    id: int
    time: datetime
    account: str | None
    address: str | None
    action: str
    target: str | None
    result: str  # "ok", or "failed"
    detail: str | None  # for a failure: the status and the reason


def _iso(moment: datetime) -> str:
    # Fixed width, so that text order is time order in the index.
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class AuditLog:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def record(
        self,
        actor: Actor,
        action: str,
        target: str | None,
        result: str,
        detail: str | None = None,
    ) -> None:
        now = datetime.now(UTC)

        def _insert(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO audit (time, account, address, action, target, result, detail)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (_iso(now), actor.account, actor.address, action, target, result, detail),
            )

        await self._db.run(_insert)

    async def query(
        self,
        start: datetime | None = None,
        end: datetime | None = None,
        account: str | None = None,
        limit: int = 1000,
    ) -> list[AuditRecord]:
        """Records in [start, end), oldest first, at most `limit` (the newest ones)."""
        clauses, params = [], []
        if start is not None:
            clauses.append("time >= ?")
            params.append(_iso(start))
        if end is not None:
            clauses.append("time < ?")
            params.append(_iso(end))
        if account is not None:
            clauses.append("account = ?")
            params.append(account)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = f"SELECT * FROM audit {where} ORDER BY id DESC LIMIT ?"
        params.append(min(max(limit, 1), MAX_QUERY))

        def _select(conn: sqlite3.Connection) -> list[AuditRecord]:
            return [
                AuditRecord(
                    id=row["id"],
                    time=datetime.strptime(row["time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC),
                    account=row["account"], address=row["address"], action=row["action"],
                    target=row["target"], result=row["result"], detail=row["detail"],
                )
                for row in conn.execute(sql, params)
            ]

        return list(reversed(await self._db.run(_select)))
