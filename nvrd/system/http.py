"""HTTP and HTTPS ports and which of them may be used: run-time settings.

The config file's `[http]` ports are the defaults; once an administrator sets them
over the API (`/api/v1/system/http`), the device database holds them and they win
over the file (the file is the installer's, the API the operator's). Ports are 80,
443, or 1024 to 65535; 1 to 1023 are allowed with a warning (another service may
want them, and clients expect the standard ones there).

`access` says which scheme clients may use: `http`, `https` or `both`. Loopback
clients are always allowed both: it is the appliance's local administration path,
and nvrctl's default.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, replace
from enum import StrEnum

from nvrd.config import HttpConfig
from nvrd.db import Database
from nvrd.errors import Invalid

STANDARD_PORTS = (80, 443)


class Access(StrEnum):
    HTTP = "http"
    HTTPS = "https"
    BOTH = "both"


@dataclass(frozen=True)
class HttpSettings:
    http_port: int  # 0: no HTTP listener
    https_port: int  # 0: no HTTPS listener
    access: Access


def check_port(value: int, field: str) -> str | None:
    """None if fine, a warning for 1-1023 (but 80/443); Invalid otherwise."""
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
        raise Invalid(f"{field}: 80, 443, or 1024 to 65535", field=field)
    if value < 1024 and value not in STANDARD_PORTS:
        return f"{field} {value} is a privileged port other than 80/443; another service may need it"
    return None


class HttpSettingsStore:
    def __init__(self, db: Database, defaults: HttpConfig) -> None:
        self._db = db
        self.current = HttpSettings(defaults.http_port, defaults.https_port, Access.BOTH)

    async def load(self) -> HttpSettings:
        def _read(conn: sqlite3.Connection) -> dict[str, str]:
            rows = conn.execute("SELECT key, value FROM setting WHERE key LIKE 'http.%'")
            return {row["key"]: row["value"] for row in rows}

        stored = await self._db.run(_read)
        current = self.current
        if "http.http_port" in stored:
            current = replace(current, http_port=int(stored["http.http_port"]))
        if "http.https_port" in stored:
            current = replace(current, https_port=int(stored["http.https_port"]))
        if "http.access" in stored:
            current = replace(current, access=Access(stored["http.access"]))
        self.current = current
        return current

    def validate(
        self, http_port: int | None, https_port: int | None, access: Access | None
    ) -> tuple[HttpSettings, list[str]]:
        """The settings as they would be, and the warnings; raises Invalid."""
        new = self.current
        warnings: list[str] = []
        if http_port is not None:
            warnings += [w for w in [check_port(http_port, "http_port")] if w]
            new = replace(new, http_port=http_port)
        if https_port is not None:
            warnings += [w for w in [check_port(https_port, "https_port")] if w]
            new = replace(new, https_port=https_port)
        if access is not None:
            new = replace(new, access=access)
        if new.http_port and new.http_port == new.https_port:
            raise Invalid("https_port: must differ from http_port", field="https_port")
        if new.access == Access.HTTP and not new.http_port:
            raise Invalid("access: HTTP only, but HTTP is disabled", field="access")
        if new.access == Access.HTTPS and not new.https_port:
            raise Invalid("access: HTTPS only, but HTTPS is disabled", field="access")
        return new, warnings

    async def save(self, settings: HttpSettings) -> None:
        values = {
            "http.http_port": str(settings.http_port),
            "http.https_port": str(settings.https_port),
            "http.access": settings.access.value,
        }

        def _write(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT INTO setting (key, value) VALUES (?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                values.items(),
            )

        await self._db.run(_write)
        self.current = settings
