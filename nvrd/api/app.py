"""The application factory: services as cleanup contexts, routes, middlewares."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import web

from nvrd.api import cameras, errors, events, jobs, recordings, system
from nvrd.api.keys import BUS, CONFIG, DEVICE, JOBS, LOG_LEVELS, RECORDER, TLS, VOLUME
from nvrd.bus import Bus
from nvrd.config import Config
from nvrd.device import DeviceState
from nvrd.jobs import Jobs
from nvrd.logs import LogLevels
from nvrd.recording.recorder import Recorder
from nvrd.storage.volume import DirectoryVolume
from nvrd.system.tls import TlsService

# JSON requests are small; certificate uploads (later) fit easily too.
MAX_BODY_BYTES = 1024 * 1024


async def _device_state(app: web.Application) -> AsyncIterator[None]:
    device = DeviceState(app[CONFIG].daemon.state_dir)
    await device.open()
    app[DEVICE] = device
    yield
    await device.close()


async def _tls(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    tls = TlsService(config.daemon.state_dir / "tls", app[DEVICE].identity.hostname)
    if config.http.https_port:
        await asyncio.to_thread(tls.start)
    app[TLS] = tls
    yield


async def _jobs(app: web.Application) -> AsyncIterator[None]:
    app[JOBS] = Jobs(app[BUS])
    yield
    await app[JOBS].close()


async def _volume(app: web.Application) -> AsyncIterator[None]:
    # Managed mode (md RAID + LUKS) replaces this with the storage service.
    volume = DirectoryVolume(app[CONFIG].storage.directory, app[BUS])
    await volume.start()
    app[VOLUME] = volume
    yield


async def _recorder(app: web.Application) -> AsyncIterator[None]:
    # Follows the volume (volume.changed on the bus); stopping lets every ffmpeg
    # finish its segment.
    recorder = Recorder(app[DEVICE].db, app[VOLUME], app[BUS])
    await recorder.start()
    app[RECORDER] = recorder
    yield
    await recorder.close()


async def _end_event_streams(app: web.Application) -> None:
    # SSE handlers wait on the bus; ending the subscriptions lets them return, so
    # shutdown doesn't sit out its timeout on open streams.
    app[BUS].close()


def make_app(config: Config, log_levels: LogLevels | None = None) -> web.Application:
    app = web.Application(
        middlewares=[errors.problem_middleware, errors.body_limit_middleware(MAX_BODY_BYTES)],
        client_max_size=MAX_BODY_BYTES,
    )
    app[CONFIG] = config
    app[BUS] = Bus()
    if log_levels is None:
        log_levels = LogLevels()
        log_levels.level, log_levels.levels = config.log.level, dict(config.log.levels)
    app[LOG_LEVELS] = log_levels
    app.cleanup_ctx.extend([_device_state, _tls, _jobs, _volume, _recorder])
    app.on_shutdown.append(_end_event_streams)
    for module in (system, jobs, events, cameras, recordings):
        app.add_routes(module.routes)
    return app
