"""The intake span of an HTTP request that records a notification (POST /v1/notifications, /v1/campaigns):
a child of the caller's `traceparent` header, a new root without one (pushsvc/tracing.py)."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

from aiohttp import web
from opentelemetry.trace import SpanKind

from pushsvc import tracing
from pushsvc.tracing import TraceContext

# A handler given the context its notification is to carry: its intake span's, or the caller's as is when
# tracing is off (passed on unchanged, as W3C asks), or None.
TracedHandler = Callable[[web.Request, TraceContext | None], Awaitable[web.StreamResponse]]


def traced_intake(handler: TracedHandler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    @functools.wraps(handler)
    async def traced(request: web.Request) -> web.StreamResponse:
        received = TraceContext.of_mapping(request.headers)
        if not tracing.enabled():
            return await handler(request, received)
        attributes = {"http.request.method": request.method, "http.route": request.path, "pushsvc.source": "api"}
        with tracing.span("intake.record", received, attributes, kind=SpanKind.SERVER) as span:
            response = await handler(request, tracing.carried(span) or received)  # or not sampled
            span.set_attribute("http.response.status_code", response.status)
            return response

    return traced
