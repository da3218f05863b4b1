"""The application factory: services as cleanup contexts, routes, middlewares."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from nvrd.accounts import AccountsService, ScryptCost
from nvrd.api import (
    accounts, audit, auth, cameras, certificates, errors, events, exports, jobs, network, playback, recordings,
    session, setup, status, storage, system, tokens,
)
from nvrd.api.authstate import Authenticator
from nvrd.api.clients import EventStreams
from nvrd.api.keys import (
    ACCOUNTS, AUDIT, AUTH, BUS, CONFIG, DEVICE, EVENT_STREAMS, EXPORTS, HEALTH, HTTP_SETTINGS, INDICATORS,
    JOBS, LOG_LEVELS, RECORDER, STORAGE, TLS, USB_EXPORTS, VOLUME,
)
from nvrd.audit import AuditLog
from nvrd.bus import Bus
from nvrd.config import Config
from nvrd.device import DeviceState
from nvrd.indicators.backends import make_backend
from nvrd.indicators.buzzer import Alarm, EvdevBuzzer, find_speaker
from nvrd.indicators.service import IndicatorService
from nvrd.jobs import Jobs
from nvrd.logs import LogLevels
from nvrd.recording.exports import JOB_KIND as EXPORT_JOB, ExportService, ExportSettings
from nvrd.recording.recorder import Recorder
from nvrd.recording.usb import UsbExports
from nvrd.storage import disks
from nvrd.storage.health import HealthWatch
from nvrd.storage.manager import ManagedStorage, allowed_candidates
from nvrd.storage.monitor import StorageMonitor
from nvrd.storage.volume import DirectoryVolume
from nvrd.system.http import HttpSettingsStore
from nvrd.system.tls import TlsService

# JSON requests are small; certificate uploads (later) fit easily too.
MAX_BODY_BYTES = 1024 * 1024


async def _device_state(app: web.Application) -> AsyncIterator[None]:
    device = DeviceState(app[CONFIG].daemon.state_dir)
    await device.open()
    app[DEVICE] = device
    yield
    await device.close()


def _accounts(cost: ScryptCost | None) -> Callable[[web.Application], AsyncIterator[None]]:
    async def accounts_ctx(app: web.Application) -> AsyncIterator[None]:
        device = app[DEVICE]
        # The realm names this device, so an HA1 taken from one recorder is no use
        # on another (docs/design/auth.md).
        service = AccountsService(device.db, realm=f"nvrd {device.identity.serial}", cost=cost)
        await service.load()
        app[ACCOUNTS] = service
        app[AUTH] = Authenticator(service)
        app[AUDIT] = AuditLog(device.db)
        yield

    return accounts_ctx


async def _http_settings(app: web.Application) -> AsyncIterator[None]:
    store = HttpSettingsStore(app[DEVICE].db, app[CONFIG].http)
    await store.load()
    app[HTTP_SETTINGS] = store
    yield


async def _tls(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    tls = TlsService(config.daemon.state_dir / "tls", app[DEVICE].identity.hostname)
    if app[HTTP_SETTINGS].current.https_port:
        await asyncio.to_thread(tls.start)
    app[TLS] = tls
    yield


async def _jobs(app: web.Application) -> AsyncIterator[None]:
    app[JOBS] = Jobs(app[BUS], limits={EXPORT_JOB: app[CONFIG].exports.max_concurrent})
    yield
    await app[JOBS].close()


async def _volume(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    if config.storage.mode == "directory":
        volume = DirectoryVolume(config.storage.directory, app[BUS])
        await volume.start()
        app[VOLUME] = volume
        yield
        return
    storage = ManagedStorage(
        config.storage, config.daemon.state_dir, app[DEVICE].db, app[BUS], app[JOBS],
        allowed_candidates(config.storage),
    )
    await storage.start()
    app[VOLUME] = app[STORAGE] = storage
    monitor = StorageMonitor(storage.refresh)
    monitor.start()
    yield
    monitor.stop()


async def _recorder(app: web.Application) -> AsyncIterator[None]:
    # Follows the volume (volume.changed on the bus); stopping lets every ffmpeg
    # finish its segment.
    recorder = Recorder(app[DEVICE].db, app[VOLUME], app[BUS])
    await recorder.start()
    app[RECORDER] = recorder
    yield
    await recorder.close()


async def _exports(app: web.Application) -> AsyncIterator[None]:
    settings = ExportSettings(expire_after_s=app[CONFIG].exports.expire_after_hours * 3600)
    service = ExportService(app[RECORDER], app[JOBS], app[DEVICE].identity.serial, settings)
    await service.start()
    app[EXPORTS] = service
    yield
    await service.close()


async def _health(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    storage = app.get(STORAGE)

    def allowed_disks() -> list[Path]:
        return [d.device for d in disks.inventory(config.storage.disks, slots=config.storage.slots)]

    # SMART only in managed mode, through storage's reader (one smartctl per disk at a time).
    watch = HealthWatch(
        app[BUS], config.health, app[VOLUME].snapshot(),
        allowed_disks if storage is not None else None,
        storage.smart if storage is not None else None,
    )
    watch.start()
    app[HEALTH] = watch
    yield
    await watch.close()


async def _indicators(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG].indicators
    slots = {int(slot): names.by_colour() for slot, names in config.slots.items()}
    backend = make_backend(config.backend, slots, config.product.by_colour())
    speaker = find_speaker() if config.buzzer else None
    # Started before the volume, so the product LED says "starting" while storage
    # assembles and unlocks; the volume's first snapshot arrives on the bus.
    def snapshot() -> dict[str, Any] | None:
        volume = app.get(VOLUME)
        return volume.snapshot() if volume is not None else None

    service = IndicatorService(
        app[BUS], backend, Alarm(EvdevBuzzer(speaker) if speaker else None),
        snapshot, led_slots=slots if config.backend == "sysfs-leds" else (),
    )
    await service.start()
    app[INDICATORS] = service
    yield
    await service.close()


async def _usb_exports(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    if not config.exports.usb:
        yield
        return
    usb = UsbExports(
        app[EXPORTS], app[JOBS], app[BUS], config.exports.usb_disks, config.storage.disks, config.daemon.state_dir
    )
    await usb.start()
    app[USB_EXPORTS] = usb
    yield
    await usb.close()


async def _started(app: web.Application) -> AsyncIterator[None]:
    # Last of the services: everything before it is up, so the product LED turns
    # from amber (starting) to what the state says.
    await app[INDICATORS].mark_started()
    yield


async def _end_event_streams(app: web.Application) -> None:
    # SSE handlers wait on the bus; ending the subscriptions lets them return, so
    # shutdown doesn't sit out its timeout on open streams.
    app[BUS].close()


def make_app(
    config: Config, log_levels: LogLevels | None = None, scrypt: ScryptCost | None = None
) -> web.Application:
    """`scrypt` overrides the password hashing cost (tests pass a cheap one)."""
    app = web.Application(
        middlewares=[
            auth.access_log_middleware,  # outermost: sees the final status
            errors.problem_middleware,
            errors.body_limit_middleware(MAX_BODY_BYTES),
            auth.auth_middleware,
            audit.audit_middleware,  # inside auth: knows the account
        ],
        client_max_size=MAX_BODY_BYTES,
    )
    app[CONFIG] = config
    app[BUS] = Bus()
    app[EVENT_STREAMS] = EventStreams()
    if log_levels is None:
        log_levels = LogLevels()
        log_levels.level, log_levels.levels = config.log.level, dict(config.log.levels)
    app[LOG_LEVELS] = log_levels
    app.cleanup_ctx.extend(
        [
            _device_state, _accounts(scrypt), _http_settings, _tls, _jobs, _indicators,
            _volume, _health, _recorder, _exports, _usb_exports, _started,
        ]
    )
    app.on_shutdown.append(_end_event_streams)
    for module in (
        system, status, jobs, events, storage, setup, accounts, tokens, session, audit, certificates,
        network, cameras, recordings, playback, exports,
    ):
        app.add_routes(module.routes)
    return app
