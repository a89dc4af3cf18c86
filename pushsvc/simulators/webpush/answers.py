"""How the Web Push peer answers a push that passed its checks: the subscription's script or the default."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Literal

from aiohttp import web

Action = Literal["answer", "hang", "close"]


@dataclass
class Rule:
    """How to answer a subscription's pushes once they pass the checks (times: for the next N only)."""

    status: int = 201
    retry_after: int | str | None = None
    delay: float = 0.0
    action: Action = "answer"
    times: int | None = None
    location: str | None = None  # a Location header (a redirect's target)


def answer_headers(rule: Rule, ttl: str, origin: str) -> dict[str, str]:
    """An answered push's headers: the TTL kept, a Location for a message created (or the rule's), Retry-After."""
    response_headers = {"TTL": ttl}
    if 200 <= rule.status < 300:
        response_headers["Location"] = f"{origin}/message/{uuid.uuid4()}"
    if rule.location is not None:
        response_headers["Location"] = rule.location
    if rule.retry_after is not None:
        response_headers["Retry-After"] = str(rule.retry_after)
    return response_headers


def error_response(status: int, message: str) -> web.Response:
    # The shape Mozilla's push service answers with.
    return web.json_response({"code": status, "error": message}, status=status)
