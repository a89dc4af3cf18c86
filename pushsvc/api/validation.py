"""Small validators for API bodies; each failure names the field."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from pushsvc.api.auth import permit, permitted_apps
from pushsvc.api.context import KNOWN_APPS
from pushsvc.model import RequestError


async def json_body(request: web.Request) -> Any:
    if request.content_type != "application/json":
        raise RequestError("body", "Content-Type must be application/json")
    try:
        return await request.json(loads=_loads)
    except LookupError as exc:  # the Content-Type charset is no text encoding Python knows ("bogus", "hex")
        raise RequestError("body", f"unsupported charset {str(request.charset)[:40]!r}") from exc
    except ValueError as exc:
        raise RequestError("body", f"not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise RequestError("body", "nesting too deep") from exc


def _loads(text: str) -> Any:
    import orjson

    return orjson.loads(text)


def app_of(request: web.Request) -> str:
    """The `?app=` a lookup by id is scoped to (ids are unique per app), which the request's key must be
    allowed to act for; optional when the key acts for one app only."""
    app = request.query.get("app")
    if app is None:
        permitted = permitted_apps(request)
        if len(permitted) == 1:
            return next(iter(permitted))
        raise RequestError("app", "query parameter required (ids are unique within an app)")
    return permit(request, known_app(request, app))


def known_app(request: web.Request, app: str, field: str = "app") -> str:
    """`app` if it is configured; a 400 naming `field` otherwise (checked before the key's apps, so an
    unknown app reads the same to every key)."""
    if app not in request.app[KNOWN_APPS]:
        raise RequestError(field, f"unknown app {app[:128]!r}")
    return app
