"""The aiohttp application: routes, body size limit, and JSON errors for every failure."""

from __future__ import annotations

from aiohttp import web
from pymongo.errors import PyMongoError

from pushsvc.api import devices, health, notifications
from pushsvc.api.auth import AUTH_KEY, ApiKeyAuth
from pushsvc.api.context import DEVICES, INTAKE, KNOWN_APPS, NOTIFICATIONS, READINESS, ReadinessCheck
from pushsvc.api.errors import json_error
from pushsvc.ingest.intake import Intake
from pushsvc.logging import get_logger
from pushsvc.model import RequestError
from pushsvc.store.devices import DeviceStore
from pushsvc.store.notifications import NotificationStore

log = get_logger(__name__)


@web.middleware
async def error_middleware(request: web.Request, handler: web.RequestHandler) -> web.StreamResponse:
    try:
        return await handler(request)
    except RequestError as exc:
        return json_error(400, "invalid_request", exc.reason, exc.field)
    except web.HTTPRequestEntityTooLarge as exc:
        return json_error(413, "body_too_large", f"body larger than {exc.max_size} bytes")
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


def build_app(
    *,
    auth: ApiKeyAuth,
    device_store: DeviceStore,
    notification_store: NotificationStore,
    intake: Intake,
    known_apps: frozenset[str],
    readiness: dict[str, ReadinessCheck],
    max_body_bytes: int,
) -> web.Application:
    app = web.Application(client_max_size=max_body_bytes, middlewares=[error_middleware])
    app[AUTH_KEY] = auth
    app[DEVICES] = device_store
    app[NOTIFICATIONS] = notification_store
    app[INTAKE] = intake
    app[KNOWN_APPS] = known_apps
    app[READINESS] = readiness
    app.add_routes(health.routes)
    app.add_routes(devices.routes)
    app.add_routes(notifications.routes)
    return app
