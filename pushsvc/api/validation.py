"""Small validators for API bodies; each failure names the field."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from pushsvc.api.auth import permit, permitted_apps
from pushsvc.api.context import KNOWN_APPS
from pushsvc.model import RequestError

TOKEN_PATTERN = re.compile(r"^[A-Za-z0-9:_\-.]{8,4096}$")
LOCALE_PATTERN = re.compile(r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})*$")


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


def field_name(key: str) -> str:
    """An input key as the `field` of an error: an empty key names the body, a huge one is cut short."""
    if not key:
        return "body"
    return key if len(key) <= 64 else key[:64] + "..."


def opt_str(obj: dict, key: str, max_length: int = 256, pattern: re.Pattern[str] | None = None) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > max_length:
        raise RequestError(key, f"must be a non-empty string of at most {max_length} characters")
    if pattern is not None and not pattern.match(value):
        raise RequestError(key, "has an invalid format")
    return value


def str_list(obj: dict, key: str, max_items: int = 50, max_length: int = 128) -> tuple[str, ...]:
    value = obj.get(key, [])
    if not isinstance(value, list) or len(value) > max_items:
        raise RequestError(key, f"must be a list of at most {max_items} strings")
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item or len(item) > max_length:
            raise RequestError(
                f"{key}[{i}]", f"must be a non-empty string of at most {max_length} characters"
            )
    return tuple(dict.fromkeys(value))
