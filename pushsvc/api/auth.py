"""API keys: hashed in config, checked in constant time, with scopes per route and the apps each key may act for.

A key's scope says which routes it may call; its apps say whose data those routes may touch. Every handler
names the app it acts for through `permit` (or `app_of` / `permitted_apps`), so a key of one app can neither
read nor change another app's devices, notifications or campaigns (OWASP API1, object-level authorization).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass

from aiohttp import web

from pushsvc.api.errors import json_error
from pushsvc.config import ApiKeySettings

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def hash_api_key(plain: str) -> str:
    return "sha256:" + hashlib.sha256(plain.encode()).hexdigest()


class AppForbidden(Exception):
    """The request's key may not act for the app it names: answered 403, naming the field."""

    def __init__(self, field: str, key_name: str, app: str) -> None:
        super().__init__(f"API key {key_name!r} may not act for app {app[:128]!r}")
        self.field = field


@dataclass(frozen=True)
class Caller:
    """Who is calling: the key's name and the apps it may act for ("*" resolved to every configured app)."""

    key_name: str
    apps: frozenset[str]


class ApiKeyAuth:
    def __init__(self, keys: Sequence[ApiKeySettings], known_apps: Collection[str]) -> None:
        everything = frozenset(known_apps)
        self._keys = [
            (bytes.fromhex(k.hash.removeprefix("sha256:")), k, everything if "*" in k.apps else frozenset(k.apps))
            for k in keys
        ]

    def identify(self, presented: str) -> tuple[ApiKeySettings, frozenset[str]] | None:
        """The key presented and the apps it may act for, or None."""
        digest = hashlib.sha256(presented.encode()).digest()
        found = None
        # Compare against every key, always: timing reveals neither which key nor how much matched.
        for expected, key, apps in self._keys:
            if hmac.compare_digest(digest, expected):
                found = key, apps
        return found


def require(scope: str) -> Callable[[Handler], Handler]:
    """Route decorator: the request needs a valid key carrying `scope`."""

    def decorate(handler: Handler) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            auth: ApiKeyAuth = request.app[AUTH_KEY]
            header = request.headers.get("Authorization", "")
            scheme, _, credential = header.partition(" ")
            if scheme.lower() != "bearer" or not credential.strip():
                return json_error(
                    401,
                    "unauthorized",
                    "missing Authorization: Bearer <api key>",
                    headers={"WWW-Authenticate": "Bearer"},
                )
            identified = auth.identify(credential.strip())
            if identified is None:
                return json_error(
                    401, "unauthorized", "unknown API key", headers={"WWW-Authenticate": "Bearer"}
                )
            key, apps = identified
            if scope not in key.scopes:
                return json_error(403, "forbidden", f"API key {key.name!r} lacks scope {scope!r}")
            request[CALLER] = Caller(key.name, apps)
            return await handler(request)

        guarded.__name__ = handler.__name__
        guarded.__doc__ = handler.__doc__
        return guarded

    return decorate


def permit(request: web.Request, app: str, field: str = "app") -> str:
    """`app`, if the request's key may act for it; raises AppForbidden (403) otherwise."""
    caller = request[CALLER]
    if app not in caller.apps:
        raise AppForbidden(field, caller.key_name, app)
    return app


def permitted_apps(request: web.Request) -> frozenset[str]:
    """The apps the request's key may act for (what an app-wide route without `?app=` covers)."""
    return request[CALLER].apps


AUTH_KEY = web.AppKey("auth", ApiKeyAuth)
CALLER = web.RequestKey("caller", Caller)
