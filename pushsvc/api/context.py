"""Typed keys for what the API handlers share through the aiohttp application."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from pushsvc.ingest.intake import Intake
from pushsvc.store.devices import DeviceStore
from pushsvc.store.notifications import NotificationStore

ReadinessCheck = Callable[[], Awaitable[None]]

DEVICES = web.AppKey("devices", DeviceStore)
NOTIFICATIONS = web.AppKey("notifications", NotificationStore)
INTAKE = web.AppKey("intake", Intake)
KNOWN_APPS = web.AppKey("known_apps", frozenset)
READINESS = web.AppKey("readiness", dict)
