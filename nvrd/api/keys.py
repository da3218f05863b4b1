"""Typed keys for what hangs on the application (web.AppKey) and on a request
(web.RequestKey)."""

from __future__ import annotations

from aiohttp import web

from nvrd.accounts import AccountsService, Principal
from nvrd.api.authstate import Authenticator
from nvrd.api.clients import EventStreams
from nvrd.audit import AuditLog
from nvrd.bus import Bus
from nvrd.config import Config
from nvrd.device import DeviceState
from nvrd.indicators.service import IndicatorService
from nvrd.jobs import Jobs
from nvrd.listeners import Listeners
from nvrd.logs import LogLevels
from nvrd.storage.health import HealthWatch
from nvrd.storage.manager import ManagedStorage
from nvrd.storage.volume import Volume
from nvrd.system.http import HttpSettingsStore
from nvrd.recording.exports import ExportService
from nvrd.recording.recorder import Recorder
from nvrd.recording.usb import UsbExports
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
ACCOUNTS = web.AppKey("accounts", AccountsService)
AUTH = web.AppKey("auth", Authenticator)
AUDIT = web.AppKey("audit", AuditLog)
HTTP_SETTINGS = web.AppKey("http_settings", HttpSettingsStore)
# Set by the daemon; absent under a test client, where port changes wait for a start.
LISTENERS = web.AppKey("listeners", Listeners)

# Set by the authentication middleware on every request that reached a handler.
PRINCIPAL = web.RequestKey("principal", Principal)
# What an audited change acted on, when the path does not say (e.g. the new
# account's name in POST /accounts).
AUDIT_TARGET = web.RequestKey("audit_target", str)
RECORDER = web.AppKey("recorder", Recorder)
EXPORTS = web.AppKey("exports", ExportService)
# Only with `[exports] usb = true`.
USB_EXPORTS = web.AppKey("usb_exports", UsbExports)
# Drive and product LEDs, the buzzer, the product status.
INDICATORS = web.AppKey("indicators", IndicatorService)
# Storage alerts and the SMART cadence.
HEALTH = web.AppKey("health", HealthWatch)
EVENT_STREAMS = web.AppKey("event_streams", EventStreams)
