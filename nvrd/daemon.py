"""The composition root: config, logging, the app, the listeners, and systemd.

`nvrd --config PATH` runs in the foreground. Under systemd (Type=notify) it says
READY=1 only once every listener is bound, keeps STATUS= current, pings the watchdog
from the event loop itself (so a stuck loop is restarted), and says STOPPING=1.
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import logging
import os
import signal
import sys
from pathlib import Path

from aiohttp import web

from nvrd import __version__, config as config_module, logs
from nvrd.api.app import make_app
from nvrd.api.keys import HTTP_SETTINGS, LISTENERS, LOG_LEVELS, TLS
from nvrd.config import Config, ConfigError
from nvrd.listeners import Listeners

log = logging.getLogger("nvrd")

EXIT_CONFIG = 2
EXIT_START = 1
# Requests still running when a stop begins get this long; the whole stop must
# fit in 10 s with room for the services' own cleanup.
SHUTDOWN_GRACE_S = 3.0


def notify(message: str) -> None:
    """sd_notify; a no-op when not started by systemd (NOTIFY_SOCKET unset)."""
    if not os.environ.get("NOTIFY_SOCKET"):
        return
    from systemd import daemon

    daemon.notify(message)


def watchdog_interval() -> float | None:
    """Half of systemd's WatchdogSec, if the watchdog is on for this process."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and int(pid) != os.getpid()):
        return None
    return int(usec) / 2_000_000


async def _watchdog(interval: float) -> None:
    # Runs on the event loop on purpose: if the loop hangs, the pings stop.
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(interval)


class Daemon:
    def __init__(self, config_path: Path, config: Config, log_levels: logs.LogLevels) -> None:
        self.config_path = config_path
        self.config = config
        self.app = make_app(config, log_levels)
        self.runner = web.AppRunner(
            self.app, handle_signals=False, shutdown_timeout=SHUTDOWN_GRACE_S, access_log=None
        )
        self.stopping = asyncio.Event()
        self.listeners = Listeners(self.runner, config.http.listen)
        # The API moves the listeners when an administrator changes the ports.
        self.app[LISTENERS] = self.listeners

    async def start(self) -> None:
        await self.runner.setup()  # runs the services' cleanup contexts
        # The ports set over the API (device database) win over the file's.
        settings = self.app[HTTP_SETTINGS].current
        try:
            await self.listeners.apply(settings.http_port, settings.https_port, self.app[TLS])
        except Exception as exc:
            raise OSError(str(exc)) from exc
        if not self.listeners.names:
            log.warning("both http_port and https_port are 0: the API is unreachable")

    @property
    def listening(self) -> list[str]:
        return self.listeners.names

    def status_line(self) -> str:
        storage = self.config.storage
        where = storage.directory if storage.mode == "directory" else f"{len(storage.disks)} disk patterns"
        listening = ", ".join(self.listening) or "no listeners"
        return f"Serving on {listening}; storage {storage.mode} ({where})"

    def reload(self) -> None:
        """SIGHUP: re-read what can change without a restart (log levels, the TLS
        certificate). Listener and storage changes need a restart and say so."""
        try:
            new = config_module.load(self.config_path)
        except ConfigError as exc:
            log.error("reload refused, keeping the running config: %s", exc)
            return
        self.app[LOG_LEVELS].set(new.log.level, new.log.levels)
        if self.app[TLS].started:
            try:
                self.app[TLS].reload()
            except (OSError, ValueError) as exc:
                log.error("reload kept the old certificate: %s", exc)
        for section in ("daemon", "storage", "http"):
            if getattr(new, section) != getattr(self.config, section):
                log.warning("[%s] changed in %s: takes effect after a restart", section, self.config_path)
        log.info("reloaded %s", self.config_path)

    async def stop(self) -> None:
        notify("STOPPING=1")
        log.info("stopping")
        await self.runner.cleanup()


async def run(config_path: Path, config: Config, log_levels: logs.LogLevels) -> int:
    loop = asyncio.get_running_loop()
    daemon = Daemon(config_path, config, log_levels)
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, daemon.stopping.set)
    loop.add_signal_handler(signal.SIGHUP, daemon.reload)

    interval = watchdog_interval()
    watchdog = asyncio.create_task(_watchdog(interval)) if interval else None
    try:
        try:
            await daemon.start()
        except OSError as exc:
            log.error("cannot start: %s", exc)
            return EXIT_START
        notify("READY=1\nSTATUS=" + daemon.status_line())
        log.info("nvrd %s ready: %s", __version__, daemon.status_line())
        await daemon.stopping.wait()
    finally:
        await daemon.stop()
        if watchdog:
            watchdog.cancel()
    log.info("stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nvrd", description="nvrd recorder daemon")
    parser.add_argument("--config", type=Path, default=Path("/etc/nvrd/nvrd.toml"))
    parser.add_argument("--version", action="version", version=f"nvrd {__version__}")
    args = parser.parse_args(argv)
    try:
        config = config_module.load(args.config)
    except ConfigError as exc:
        print(f"nvrd: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    # When the watchdog aborts a wedged loop (SIGABRT), every thread's stack goes to
    # stderr, which is the journal under systemd: the hang can then be diagnosed.
    faulthandler.enable()
    log_levels = logs.setup(config.log)
    try:
        return asyncio.run(run(args.config, config, log_levels))
    except Exception:
        log.exception("nvrd failed")
        return EXIT_START


if __name__ == "__main__":
    sys.exit(main())
