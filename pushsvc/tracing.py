"""Traces from publish to provider ack (OpenTelemetry), and the W3C trace context a notification carries.

A push crosses a store: it is recorded by one replica and claimed (maybe much later, maybe by another) by the
one that sends it. So the context travels in the notification document (`trace`: the W3C `traceparent` and
`tracestate` strings of the intake span, `TraceContext.document`), and the spans after the store (claim,
dispatch, lookup, send, finish, outcome) are *children* of that stored intake span: one trace per push, one
tree, whatever replica or how late. Links are kept for nothing here: every per-notification span has exactly
one notification, and the batch lane's shared reads and writes are told as one span per notification with the
shared timing (`record_span`), so each push's trace stays whole.

Off by default, at next to no cost: unless `tracing.otlp_endpoint` is set (or a test installs a provider) no
SDK is imported or installed, `tracer` is the API's no-op tracer, and the call sites take their `enabled()`
fast path (no span objects, no context extraction). An incoming `traceparent` is still stored and passed on
unchanged (outcome events, dead letters), as W3C asks of a participant that does not trace itself.

The SDK's provider is this module's, not the API's global one (`trace.set_tracer_provider` can be set once
per process; a process running several services, as the tests do, could not replace it): `install` swaps it.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import (
    INVALID_SPAN,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

    from pushsvc.config.settings import TracingSettings

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
# The notification document's field (store/notifications.py documents it); never part of the request hash.
TRACE_FIELD = "trace"
# W3C trace context, version 00 and the forms later versions must keep (the prefix): anything else is dropped.
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}(-.*)?$")
# W3C: a tracestate of up to 512 characters must be propagated; longer ones may be cut, and here are dropped.
MAX_TRACESTATE = 512
_NOOP = trace.NoOpTracer()
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class TraceContext:
    """A W3C trace context as carried in headers and stored on a notification."""

    traceparent: str
    tracestate: str = ""

    @classmethod
    def of(cls, traceparent: Any, tracestate: Any = "") -> TraceContext | None:
        """A context from header or stored values, or None if there is none or it is malformed (a producer's
        bad header must not reach the store or the outcome events)."""
        if isinstance(traceparent, bytes):
            traceparent = traceparent.decode("ascii", "replace")
        if isinstance(tracestate, bytes):
            tracestate = tracestate.decode("ascii", "replace")
        if not isinstance(traceparent, str) or len(traceparent) > 128 or not _TRACEPARENT.match(traceparent):
            return None
        if traceparent.startswith("ff") or traceparent[3:35] == "0" * 32 or traceparent[36:52] == "0" * 16:
            return None  # W3C: version ff and all-zero ids are invalid
        if not isinstance(tracestate, str) or len(tracestate) > MAX_TRACESTATE:
            tracestate = ""
        return cls(traceparent, tracestate)

    @classmethod
    def of_headers(cls, headers: Iterable[tuple[str, bytes | None]] | None) -> TraceContext | None:
        """From Kafka record headers (the first `traceparent`, as W3C says of repeated ones)."""
        parent: bytes | None = None
        state: bytes | None = None
        for name, value in headers or ():
            lowered = name.lower()
            if lowered == TRACEPARENT and parent is None:
                parent = value
            elif lowered == TRACESTATE and state is None:
                state = value
        return None if parent is None else cls.of(parent, state or "")

    @classmethod
    def of_mapping(cls, values: Mapping[str, Any] | None) -> TraceContext | None:
        """From HTTP headers (aiohttp's are case-insensitive) or a stored `trace` field; never raises."""
        if not isinstance(values, Mapping):
            return None
        return cls.of(values.get(TRACEPARENT), values.get(TRACESTATE) or "")

    def document(self) -> dict[str, str]:
        return {TRACEPARENT: self.traceparent, **({TRACESTATE: self.tracestate} if self.tracestate else {})}

    def kafka_headers(self) -> list[tuple[str, bytes]]:
        return [(name, value.encode()) for name, value in self.document().items()]

    def context(self) -> Context:
        """The remote parent this context names, for a span started under it (built directly: `of` checked the
        form, and the propagator's extract costs as much again)."""
        parent = SpanContext(
            int(self.traceparent[3:35], 16),
            int(self.traceparent[36:52], 16),
            is_remote=True,
            trace_flags=TraceFlags(int(self.traceparent[53:55], 16)),
            trace_state=TraceState.from_header([self.tracestate]) if self.tracestate else TraceState(),
        )
        return trace.set_span_in_context(NonRecordingSpan(parent), Context())

    @property
    def trace_id(self) -> str:
        return self.traceparent[3:35]

    @property
    def sampled(self) -> bool:
        return bool(int(self.traceparent[53:55], 16) & 1)


def with_context(headers: Iterable[tuple[str, bytes]], context: TraceContext | None) -> list[tuple[str, bytes]]:
    """Kafka headers with `context` as their trace context (any other one replaced, not repeated); without one,
    the headers as they are (a malformed `traceparent` a producer sent stays in its dead letter, as it came)."""
    if context is None:
        return list(headers)
    kept = [(n, v) for n, v in headers if n.lower() not in (TRACEPARENT, TRACESTATE)]
    return [*kept, *context.kafka_headers()]


class _State:
    tracer: trace.Tracer = _NOOP
    provider: TracerProvider | None = None


def enabled() -> bool:
    """Whether spans are made at all (a provider is installed): the call sites' fast path when not."""
    return _State.provider is not None


def tracer() -> trace.Tracer:
    return _State.tracer


def install(provider: TracerProvider | None) -> None:
    """Use `provider` (an SDK TracerProvider) for this process's spans; None: back to the no-op tracer."""
    _State.provider = provider
    _State.tracer = _NOOP if provider is None else provider.get_tracer("pushsvc")


def configure(settings: TracingSettings) -> TracerProvider | None:
    """The SDK provider exporting to `settings.otlp_endpoint` (OTLP/HTTP protobuf), installed; None and nothing
    imported when no endpoint is set. Sampling: ParentBased(TraceIdRatioBased(sample_ratio)): a root (a request
    without `traceparent`) is sampled at the ratio, anything else follows its parent's sampled flag, so a
    producer that samples a push gets all of its trace and the stored context keeps one decision per push."""
    if settings.otlp_endpoint is None:
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    provider = TracerProvider(
        resource=Resource.create({"service.name": settings.service_name}),
        sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)),
    )
    exporter = OTLPSpanExporter(
        endpoint=traces_url(settings.otlp_endpoint),
        certificate_file=settings.ca_file,
        timeout=settings.export_timeout_seconds,
    )
    provider.add_span_processor(BatchSpanProcessor(exporter))
    install(provider)
    return provider


def traces_url(endpoint: str) -> str:
    """The URL spans are posted to: the setting, or its OTLP/HTTP traces path when it names only the host."""
    return endpoint.rstrip("/") + "/v1/traces" if urlsplit(endpoint).path in ("", "/") else endpoint


def shutdown(provider: TracerProvider) -> None:
    """Export what is queued (bounded by the export timeout) and go back to the no-op tracer. Blocking: the
    service calls it in a thread at stop."""
    if _State.provider is provider:
        install(None)
    provider.shutdown()


def carried(span: Span) -> TraceContext | None:
    """What `span`'s children elsewhere (after the store, on Kafka) name as their parent."""
    context = span.get_span_context()
    if not context.is_valid:
        return None
    traceparent = f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"
    tracestate = context.trace_state.to_header() if context.trace_state else ""
    return TraceContext(traceparent, tracestate if len(tracestate) <= MAX_TRACESTATE else "")


def _context(parent: TraceContext | Span | None) -> Context | None:
    """The parent a span is started under: a stored or received context, a live span, or none (a new root;
    never the span current in this task: runs start in a fresh context, and an HTTP request's span is not a
    push's parent). None: the parent is not sampled, and under it nothing is recorded (the ParentBased
    sampler's answer), so the SDK is not asked at all: at 1% sampling, 99% of pushes cost a string test per
    span instead of a span each (benchmarks/tracing_cost.py)."""
    if parent is None:
        return Context()
    if isinstance(parent, TraceContext):
        return parent.context() if parent.sampled else None
    return trace.set_span_in_context(parent, Context()) if parent.is_recording() else None


def start(
    name: str,
    parent: TraceContext | Span | None,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Mapping[str, Any] | None = None,
    start_time: int | None = None,
) -> Span:
    """A span under `parent` (see `_context`); INVALID_SPAN, nothing made, when tracing is off or `parent` is
    not sampled (whoever carries a context on then passes the parent's: `carried(span) or parent`)."""
    if _State.provider is None:
        return INVALID_SPAN
    context = _context(parent)
    if context is None:
        return INVALID_SPAN
    return _State.tracer.start_span(name, context, kind, attributes, start_time=start_time)


def record_span(
    name: str, parent: TraceContext | Span | None, start_time: int, end_time: int, attributes: Mapping[str, Any]
) -> None:
    """A finished span with given times: one per notification for work the batch lane does for many at once
    (a claim, a shared lookup, a bulk finish), so each push's trace shows it."""
    if _State.provider is not None:
        start(name, parent, attributes=attributes, start_time=start_time).end(end_time)


@contextmanager
def span(
    name: str,
    parent: TraceContext | Span | None,
    attributes: Mapping[str, Any] | None = None,
    kind: SpanKind = SpanKind.INTERNAL,
) -> Iterator[Span]:
    """`start`, current for the block (so what it starts, in tasks too, is its child), ended with an error
    status if the block raises; INVALID_SPAN and nothing else when tracing is off. `parent` may be a live span."""
    if _State.provider is None:
        yield INVALID_SPAN
        return
    opened = start(name, parent, kind, attributes)
    if opened is INVALID_SPAN:  # not sampled
        yield opened
        return
    with trace.use_span(opened, end_on_exit=True, record_exception=False, set_status_on_exception=False):
        try:
            yield opened
        except BaseException as exc:
            opened.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            raise


def current() -> TraceContext | None:
    """The context of the span current in this task, if it is a recording one (a finish's, for its event)."""
    if _State.provider is None:
        return None
    current_span = trace.get_current_span()
    return carried(current_span) if current_span.is_recording() else None


def current_span() -> Span:
    return trace.get_current_span()


async def within(span_: Span, work: Awaitable[T]) -> T:
    """Await `work` with `span_` current (its spans, in the tasks it starts too, are children); not ended."""
    if not span_.is_recording():
        return await work
    with trace.use_span(span_, end_on_exit=False, record_exception=False, set_status_on_exception=False):
        return await work


def counted(target: Span, counts: Mapping[str, int], prefix: str = "pushsvc.count.") -> None:
    """A chunk's or notification's counts as attributes (`pushsvc.count.delivered`, ...): numbers, never who."""
    if target.is_recording():
        target.set_attributes({prefix + key: int(value) for key, value in counts.items() if value})
