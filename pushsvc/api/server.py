"""The aiohttp application: routes, body size limit, and JSON errors for every failure."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pymongo
from aiohttp import web
from pymongo.errors import PyMongoError

from pushsvc.api import asyncapi, campaigns, devices, health, notifications, openapi, receipts
from pushsvc.api.auth import AUTH_KEY, ApiKeyAuth, AppForbidden
from pushsvc.api.context import (
    APP_PROVIDERS,
    CAMPAIGNS,
    CLOCK,
    CONSUMER_STATE,
    DEVICES,
    INTAKE,
    KNOWN_APPS,
    MAX_BODY,
    NOTIFICATIONS,
    PREVIEW,
    READINESS,
    RECEIPT_EVENTS,
    RECEIPT_STORE,
    STORE_TIMEOUT,
    WAKE,
    WEB_ALLOWED_HOSTS,
    ReadinessCheck,
)
from pushsvc.api.errors import json_error
from pushsvc.ingest.intake import Intake
from pushsvc.logs import get_logger
from pushsvc.model import PushRequest, RequestError
from pushsvc.outcomes import OutcomePublisher
from pushsvc.scheduling.clock import ClockNotSynced
from pushsvc.store.campaigns import CampaignStore
from pushsvc.store.devices import DeviceStore
from pushsvc.store.notifications import NotificationStore
from pushsvc.store.receipts import ReceiptStore

log = get_logger(__name__)


@web.middleware
async def error_middleware(request: web.Request, handler: web.RequestHandler) -> web.StreamResponse:
    try:
        # One deadline for every MongoDB operation the request makes (PyMongo's client-side operation
        # timeout): a hung or unreachable MongoDB answers 503 below within it instead of holding the caller.
        with pymongo.timeout(request.app[STORE_TIMEOUT]):
            return await handler(request)
    except RequestError as exc:
        return json_error(400, "invalid_request", exc.reason, exc.field)
    except AppForbidden as exc:
        return json_error(403, "forbidden", str(exc), exc.field)
    except ClockNotSynced:
        # Still starting: no time stamp can be taken on the database's clock yet (readiness is 503 too).
        return json_error(503, "starting", "the service is starting, retry later", headers={"Retry-After": "1"})
    except web.HTTPRequestEntityTooLarge:
        return json_error(413, "body_too_large", f"body larger than {request.app[MAX_BODY]} bytes")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return json_error(exc.status, exc.reason.lower().replace(" ", "_"), exc.reason, headers=None)
    except PyMongoError as exc:
        log.warning("api_store_unavailable", path=request.path, error=type(exc).__name__)
        return json_error(
            503,
            "store_unavailable",
            "the device store is unavailable, retry later",
            headers={"Retry-After": "5"},
        )
    except Exception:
        log.exception("api_unhandled_error", path=request.path, method=request.method)
        return json_error(500, "internal_error", "internal error")


def build_http_app(
    *,
    auth: ApiKeyAuth,
    device_store: DeviceStore,
    notification_store: NotificationStore,
    intake: Intake,
    known_apps: frozenset[str],
    web_hosts: dict[str, frozenset[str]] | None = None,
    app_providers: dict[str, frozenset[str]] | None = None,
    readiness: dict[str, ReadinessCheck],
    consumer_state: Callable[[], dict[str, object]] = lambda: {},
    kafka_topics: tuple[str, str, str] = ("push.requests", "push.requests.dlq", "push.outcomes"),
    max_body_bytes: int,
    store_timeout_seconds: float = 5.0,
    campaign_store: CampaignStore | None = None,
    clock: Callable[[], float] = time.time,
    wake: Callable[[float | None], None] = lambda due_at: None,
    preview: Callable[[PushRequest], dict[str, Any]] = lambda request: {},
    receipt_store: ReceiptStore | None = None,
    receipt_events: OutcomePublisher | None = None,
) -> web.Application:
    http_app = web.Application(client_max_size=max_body_bytes, middlewares=[error_middleware])
    http_app[AUTH_KEY] = auth
    http_app[DEVICES] = device_store
    http_app[NOTIFICATIONS] = notification_store
    http_app[INTAKE] = intake
    http_app[KNOWN_APPS] = known_apps
    http_app[WEB_ALLOWED_HOSTS] = web_hosts or {}
    http_app[APP_PROVIDERS] = app_providers
    http_app[READINESS] = readiness
    http_app[CONSUMER_STATE] = consumer_state
    http_app[asyncapi.KAFKA_TOPICS] = kafka_topics
    http_app[CAMPAIGNS] = campaign_store or CampaignStore(notification_store)
    http_app[CLOCK] = clock
    http_app[WAKE] = wake
    http_app[PREVIEW] = preview
    http_app[RECEIPT_STORE] = receipt_store or ReceiptStore(notification_store.database, device_store)
    http_app[RECEIPT_EVENTS] = receipt_events
    http_app[MAX_BODY] = max_body_bytes
    http_app[STORE_TIMEOUT] = store_timeout_seconds
    http_app.add_routes(health.routes)
    http_app.add_routes(devices.routes)
    http_app.add_routes(notifications.routes)
    http_app.add_routes(campaigns.routes)
    http_app.add_routes(receipts.routes)
    http_app.add_routes(openapi.routes)
    http_app.add_routes(asyncapi.routes)
    return http_app
