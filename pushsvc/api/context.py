"""Typed keys for what the API handlers share through the aiohttp application."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from pushsvc.ingest.intake import Intake
from pushsvc.model import PushRequest
from pushsvc.outcomes import OutcomePublisher
from pushsvc.store.campaigns import CampaignStore
from pushsvc.store.devices import DeviceStore
from pushsvc.store.notifications import NotificationStore
from pushsvc.store.receipts import ReceiptStore

ReadinessCheck = Callable[[], Awaitable[None]]

DEVICES = web.AppKey("devices", DeviceStore)
NOTIFICATIONS = web.AppKey("notifications", NotificationStore)
CAMPAIGNS = web.AppKey("campaigns", CampaignStore)
INTAKE = web.AppKey("intake", Intake)
KNOWN_APPS = web.AppKey("known_apps", frozenset)
# Per app, the providers it configures (None: not known, every provider's payload limit applies).
APP_PROVIDERS: web.AppKey[dict[str, frozenset[str]] | None] = web.AppKey("app_providers")
# Per app, the hosts a web subscription may name although internal (apps.<app>.webpush.allowed_hosts).
WEB_ALLOWED_HOSTS = web.AppKey("web_allowed_hosts", dict)
READINESS = web.AppKey("readiness", dict)
# Kafka consumer group membership for /readyz: reported, not a readiness condition.
CONSUMER_STATE: web.AppKey[Callable[[], dict[str, object]]] = web.AppKey("consumer_state")
# Time source (epoch seconds) shared with the scheduler, so tests can inject a clock.
CLOCK: web.AppKey[Callable[[], float]] = web.AppKey("clock")
# Tells the scheduler something is due at a time (None: now), so it claims then rather than at its safety poll.
WAKE: web.AppKey[Callable[[float | None], None]] = web.AppKey("wake")
MAX_BODY = web.AppKey("max_body", int)
# A request's rendered payload per platform and locale (dispatch/preview.py, with the service's providers).
PREVIEW: web.AppKey[Callable[[PushRequest], dict[str, Any]]] = web.AppKey("preview")
# Seconds one API request may spend on MongoDB in all (http.store_timeout_ms).
STORE_TIMEOUT = web.AppKey("store_timeout", float)
# Receipts (api/receipts.py): where they are recorded, and the publisher of their events (None: not announced).
RECEIPT_STORE = web.AppKey("receipt_store", ReceiptStore)
RECEIPT_EVENTS: web.AppKey[OutcomePublisher | None] = web.AppKey("receipt_events")
