"""API keys: hashed in config, checked in constant time, with scopes per route."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable, Sequence

from aiohttp import web

from pushsvc.api.errors import json_error
from pushsvc.config import ApiKeySettings

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def hash_api_key(plain: str) -> str:
    return "sha256:" + hashlib.sha256(plain.encode()).hexdigest()


class ApiKeyAuth:
    def __init__(self, keys: Sequence[ApiKeySettings]) -> None:
        self._keys = [(bytes.fromhex(k.hash.removeprefix("sha256:")), k) for k in keys]

    def identify(self, presented: str) -> ApiKeySettings | None:
        digest = hashlib.sha256(presented.encode()).digest()
        found = None
        # Compare against every key, always: timing reveals neither which key nor how much matched.
        for expected, key in self._keys:
            if hmac.compare_digest(digest, expected):
                found = key
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
            key = auth.identify(credential.strip())
            if key is None:
                return json_error(
                    401, "unauthorized", "unknown API key", headers={"WWW-Authenticate": "Bearer"}
                )
            if scope not in key.scopes:
                return json_error(403, "forbidden", f"API key {key.name!r} lacks scope {scope!r}")
            request[API_KEY_NAME] = key.name
            return await handler(request)

        guarded.__name__ = handler.__name__
        guarded.__doc__ = handler.__doc__
        return guarded

    return decorate


AUTH_KEY = web.AppKey("auth", ApiKeyAuth)
API_KEY_NAME = web.RequestKey("api_key_name", str)
