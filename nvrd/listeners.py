"""The daemon's TCP listeners, which an administrator can move without a restart.

New ports are bound before the old listeners close, so a port that cannot be bound
(in use, or not allowed) is refused with the old ones still serving; connections
already open on an old port finish normally.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from nvrd.errors import Conflict
from nvrd.system.tls import TlsService

log = logging.getLogger(__name__)

SCHEMES = ("http", "https")


class Listeners:
    def __init__(self, runner: web.AppRunner, listen: str) -> None:
        self._runner = runner
        self._listen = listen
        self._sites: dict[str, web.TCPSite] = {}
        self._ports: dict[str, int] = {"http": 0, "https": 0}

    @property
    def names(self) -> list[str]:
        return [f"{scheme} {self._listen}:{self._ports[scheme]}" for scheme in SCHEMES if self._ports[scheme]]

    async def apply(self, http_port: int, https_port: int, tls: TlsService) -> None:
        wanted = {"http": http_port, "https": https_port}
        started: dict[str, web.TCPSite] = {}
        try:
            for scheme in SCHEMES:
                port = wanted[scheme]
                if port == self._ports[scheme] or not port:
                    continue
                context = None
                if scheme == "https":
                    if not tls.started:
                        await asyncio.to_thread(tls.start)
                    context = tls.context
                site = web.TCPSite(self._runner, self._listen, port, ssl_context=context)
                try:
                    await site.start()
                except OSError as exc:
                    raise Conflict(
                        f"cannot listen on {self._listen}:{port}: {exc.strerror or exc}",
                        field=f"{scheme}_port",
                    ) from exc
                started[scheme] = site
        except BaseException:
            for site in started.values():
                await site.stop()
            raise
        for scheme in SCHEMES:
            if wanted[scheme] == self._ports[scheme]:
                continue
            old = self._sites.pop(scheme, None)
            if old is not None:
                await old.stop()
                log.info("stopped listening on %s", old.name)
            if scheme in started:
                self._sites[scheme] = started[scheme]
                log.info("listening on %s", started[scheme].name)
            self._ports[scheme] = wanted[scheme]
