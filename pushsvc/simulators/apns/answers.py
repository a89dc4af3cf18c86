"""How the APNs peer answers: the scripted rule for a request, and the HTTP/2 response it makes."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Literal

Action = Literal["answer", "goaway", "close", "hang"]


@dataclass
class Rule:
    """How to answer a request. ``times`` limits how often a per-token rule applies (None = always)."""

    status: int = 200
    reason: str | None = None
    retry_after: int | str | None = None
    delay: float = 0.0
    action: Action = "answer"
    times: int | None = None
    # A 410's body "timestamp" (ms since epoch: when APNs last confirmed the token invalid); None = now.
    timestamp_ms: int | None = None


def response(rule: Rule, apns_id: str) -> tuple[list[tuple[str, str]], bytes]:
    """The headers and body APNs sends for an answered ``rule``: an empty 200, or Apple's error JSON."""
    headers = [(":status", str(rule.status)), ("apns-id", apns_id)]
    if rule.retry_after is not None:
        headers.append(("retry-after", str(rule.retry_after)))
    payload = b""
    if rule.status != 200:
        error: dict[str, Any] = {"reason": rule.reason or "InternalServerError"}
        if rule.status == 410:
            error["timestamp"] = int(time.time() * 1000) if rule.timestamp_ms is None else rule.timestamp_ms
        payload = json.dumps(error).encode()
        headers.append(("content-type", "application/json; charset=utf-8"))
    headers.append(("content-length", str(len(payload))))
    return headers, payload
