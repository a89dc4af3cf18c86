"""What a provider's HTTP transport gives back, shared by the adapters and the transports they use.

Its own module so that an adapter (fcm.py) and a transport (h2client.py) can both depend on it without
depending on each other.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class HttpReply:
    status: int
    headers: Mapping[str, str]  # case-insensitive lookups expected (httpx.Headers or lower-case keys)
    body: bytes


class TransportFailure(Exception):
    """The request got no HTTP answer; ``reason`` is "timeout" or "connection_error"."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class FcmTransport(Protocol):
    """The one place where an FCM HTTP request is made (replaceable by a faster HTTP/2 client)."""

    async def post(self, url: str, headers: Mapping[str, str], body: bytes) -> HttpReply:
        """POST and return the answer; raise TransportFailure when no answer arrived."""
        ...

    async def aclose(self) -> None: ...


__all__ = ["FcmTransport", "HttpReply", "TransportFailure"]
