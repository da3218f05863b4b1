"""Typed keys for what hangs on the application (aiohttp's web.AppKey)."""

from __future__ import annotations

from aiohttp import web

from nvrd.bus import Bus
from nvrd.config import Config
from nvrd.device import DeviceState
from nvrd.jobs import Jobs
from nvrd.logs import LogLevels
from nvrd.storage.manager import ManagedStorage
from nvrd.storage.volume import Volume
from nvrd.system.tls import TlsService

CONFIG = web.AppKey("config", Config)
BUS = web.AppKey("bus", Bus)
JOBS = web.AppKey("jobs", Jobs)
DEVICE = web.AppKey("device", DeviceState)
TLS = web.AppKey("tls", TlsService)
LOG_LEVELS = web.AppKey("log_levels", LogLevels)
# The volume as recording and the API see it, in either storage mode.
VOLUME = web.AppKey("volume", Volume)  # type: ignore[type-abstract]
# Only in managed mode (md RAID + LUKS); absent in directory mode.
STORAGE = web.AppKey("storage", ManagedStorage)
