"""The spans of dispatch, from claim to finish (pushsvc/tracing.py has the tree and why it is one).

Kept here rather than inline so the runners each gain a line or two: the batch lane (a few devices each) gets
one span per device send; the fan-out lane one per chunk with its counts, never one per device (a 1M-device
campaign would make a million). Nothing here names a device beyond a masked token (logs.mask_token).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

from opentelemetry.trace import INVALID_SPAN, Span, SpanKind

from pushsvc import tracing
from pushsvc.logs import mask_token
from pushsvc.providers.base import Delivery
from pushsvc.store.records import NotificationRecord
from pushsvc.token_kinds import provider_for


class _Result(Protocol):
    outcome: str
    reason: str
    attempts: int


def about(record: NotificationRecord, lane: str | None = None) -> dict[str, Any]:
    """Who a notification is, on its spans."""
    return {"pushsvc.app": record.app, "pushsvc.notification.id": record.id[:200],
            "pushsvc.lane": lane or record.lane or "fanout"}


def claimed(records: Sequence[NotificationRecord], lane: str, owner: str, started_ns: int, direct: bool) -> None:
    """A `schedule.claim` span per notification a claim took (one write for them all, so one shared timing);
    `direct`: recorded already held by the replica that took it in (the claim was part of intake's insert)."""
    if not tracing.enabled():
        return
    ended = time.time_ns()
    for record in records:
        tracing.record_span("schedule.claim", record.trace, started_ns, ended,
                            {**about(record, lane), "pushsvc.replica": owner, "pushsvc.claim.direct": direct})


def dispatching(record: NotificationRecord, lane: str | None = None) -> Span:
    """The span of one notification's run (a child of its intake span); ended by the runner."""
    if not tracing.enabled():  # no attributes built for a span that is not made
        return INVALID_SPAN
    return tracing.start("notification.dispatch", record.trace, attributes=about(record, lane))


def looked_up(spans: Sequence[Span], started_ns: int, chunks: Sequence[Any]) -> None:
    """The batch lane's shared first read: an `audience.lookup` span under each notification's run."""
    if not tracing.enabled():
        return
    ended = time.time_ns()
    for span, chunk in zip(spans, chunks, strict=True):
        found = -1 if chunk is None else len(chunk.devices)
        tracing.record_span("audience.lookup", span, started_ns, ended,
                            {"pushsvc.chunk.devices": found, "pushsvc.lookup.shared_by": len(spans)})


@contextmanager
def lookup(notification_id: str) -> Iterator[Span]:
    """One chunk's read of the devices, under the run current in this task."""
    with tracing.span("audience.lookup", tracing.current_span(),
                      {"pushsvc.notification.id": notification_id[:200]}) as span:
        yield span


def chunk_read(span: Span, chunk: Any) -> None:
    if span.is_recording():
        span.set_attributes({"pushsvc.chunk.devices": len(chunk.devices),
                             "pushsvc.chunk.unknown_tokens": len(chunk.unknown_tokens),
                             "pushsvc.chunk.exhausted": bool(chunk.exhausted)})


@contextmanager
def chunk_send(record: NotificationRecord, devices: int) -> Iterator[Span]:
    """A fan-out chunk's sends, as one span; `sent` adds its counts."""
    with tracing.span("provider.send", tracing.current_span(),
                      {**about(record), "pushsvc.chunk.devices": devices}, SpanKind.CLIENT) as span:
        yield span


def sent(span: Span, counts: Mapping[str, int]) -> None:
    tracing.counted(span, counts)


Send = Callable[..., Awaitable[Any]]


def per_device(send: Send) -> Send:
    """`send` (DeliverySender.deliver) with a `provider.send` span per device, under the run current in the
    task; `send` itself when tracing is off."""
    if not tracing.enabled():
        return send

    async def traced(delivery: Delivery, *args: Any, **kwargs: Any) -> Any:
        if not tracing.current_span().is_recording():  # a push not sampled
            return await send(delivery, *args, **kwargs)
        device = delivery.device
        attributes = {"pushsvc.provider": provider_for(device.kind) or "none", "pushsvc.platform": device.platform,
                      "pushsvc.token": str(mask_token(device.token))}
        with tracing.span("provider.send", tracing.current_span(), attributes, SpanKind.CLIENT) as span:
            result: _Result = await send(delivery, *args, **kwargs)
            if span.is_recording():
                span.set_attributes({"pushsvc.outcome": result.outcome, "pushsvc.reason": result.reason,
                                     "pushsvc.attempts": result.attempts})
            return result

    return traced


@contextmanager
def finishing(record: NotificationRecord, state: str) -> Iterator[Span]:
    """A notification's finish (the fenced write and its outcome event), a child of its intake span."""
    with tracing.span("notification.finish", record.trace, {**about(record), "pushsvc.state": state}) as span:
        yield span


def finish_spans(records: Sequence[NotificationRecord], state: str) -> list[Span]:
    """The batch lane's bulk finish: a `notification.finish` span per notification, ended by the caller."""
    if not tracing.enabled():
        return [INVALID_SPAN] * len(records)
    return [tracing.start("notification.finish", r.trace, attributes={**about(r), "pushsvc.state": state})
            for r in records]
