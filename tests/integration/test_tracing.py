"""Traces from publish to provider ack: the span tree of a push, read with the SDK's in-memory exporter, and
once as a collector receives it over OTLP/HTTP (a receiver started here, decoding the protobuf it is sent)."""

from __future__ import annotations

import asyncio
import secrets
import ssl
import sys
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiokafka import AIOKafkaProducer
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from pushsvc import tracing
from pushsvc.ingest.idempotency import request_hash
from tests.integration.stack import Stack, auth_headers, consume, wait_until

pytestmark = pytest.mark.integration

AFTER_CLAIM = ["schedule.claim", "notification.dispatch", "audience.lookup", "provider.send", "notification.finish",
               "outcome.publish"]


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Every span this process makes, kept in memory (sampled always), for one test."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    try:
        yield exporter
    finally:
        tracing.install(None)
        provider.shutdown()


def token(n: int) -> str:
    return f"{n:064x}"


def producer_context() -> tuple[str, str, str]:
    """A producer's span: (traceparent, trace id, span id), sampled."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def alert(request_id: str, target: dict[str, Any]) -> dict:
    return {"id": request_id, "app": "demo", "target": target, "message": {"title": "t", "body": "b"}}


async def publish(
    stack: Stack, value: dict | bytes, headers: Sequence[tuple[str, bytes]] = (), key: bytes | None = None
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, acks="all")
    await producer.start()
    try:
        payload = value if isinstance(value, bytes) else orjson.dumps(value)
        await producer.send_and_wait(stack.requests_topic, payload, key=key, headers=list(headers))
    finally:
        await producer.stop()


def hex_id(value: int, width: int) -> str:
    return f"{value:0{width}x}"


def in_trace(exporter: InMemorySpanExporter, trace_id: str) -> dict[str, list[ReadableSpan]]:
    found: dict[str, list[ReadableSpan]] = {}
    for span in exporter.get_finished_spans():
        if span.context is not None and hex_id(span.context.trace_id, 32) == trace_id:
            found.setdefault(span.name, []).append(span)
    return found


async def trace_of(exporter: InMemorySpanExporter, trace_id: str, wanted: Sequence[str]) -> dict:
    """The spans of `trace_id` once every name in `wanted` has ended (spans end after the writes they time)."""

    async def complete() -> dict | None:
        found = in_trace(exporter, trace_id)
        return found if all(name in found for name in wanted) else None

    return await wait_until(complete, timeout=15)


def parent_of(span: ReadableSpan) -> str | None:
    return None if span.parent is None else hex_id(span.parent.span_id, 16)


def span_id(span: ReadableSpan) -> str:
    assert span.context is not None
    return hex_id(span.context.span_id, 16)


def header(record: Any, name: str) -> str | None:
    values = [value.decode() for key, value in record.headers or () if key == name]
    assert len(values) <= 1, record.headers
    return values[0] if values else None


def assert_tree(found: dict[str, list[ReadableSpan]], intake_parent: str | None, devices: int = 1) -> ReadableSpan:
    """The tree of one push: intake under the producer's span (`intake_parent`; None: a root), claim, dispatch
    and finish under intake, lookup and sends under dispatch, the outcome event under the finish."""
    (intake,) = found["intake.record"]
    assert parent_of(intake) == intake_parent
    for name in ("schedule.claim", "notification.dispatch", "notification.finish"):
        (span,) = found[name]
        assert parent_of(span) == span_id(intake), name
    (dispatch,) = found["notification.dispatch"]
    assert {parent_of(s) for s in found["audience.lookup"] + found["provider.send"]} == {span_id(dispatch)}
    (finish,) = found["notification.finish"]
    (publish_span,) = found["outcome.publish"]
    assert parent_of(publish_span) == span_id(finish)
    assert publish_span.kind is SpanKind.PRODUCER
    return publish_span


async def test_a_kafka_push_with_traceparent_is_one_trace_from_intake_to_its_outcome_event(
    stack: Stack, spans: InMemorySpanExporter
) -> None:
    service = await stack.start()
    await stack.register(token(1), "ios", user_id="u1")
    traceparent, trace_id, producer_span = producer_context()
    body = alert("traced-1", {"users": ["u1"]})
    await publish(stack, body, [("traceparent", traceparent.encode()), ("tracestate", b"vendor=1")])
    doc = await stack.wait_finished("traced-1")
    assert doc["state"] == "done" and doc["counts"]["delivered"] == 1, doc

    found = await trace_of(spans, trace_id, ["intake.record", *AFTER_CLAIM])
    publish_span = assert_tree(found, producer_span)
    (intake,) = found["intake.record"]
    assert intake.kind is SpanKind.CONSUMER
    assert intake.attributes is not None and intake.attributes["pushsvc.request_id"] == "traced-1"
    # Direct dispatch: the claim was written with the insert, by this replica.
    (claim,) = found["schedule.claim"]
    assert claim.attributes is not None
    assert claim.attributes["pushsvc.claim.direct"] is True and claim.attributes["pushsvc.replica"] == service.owner
    # The batch lane: one send span per device, its token masked.
    (send,) = found["provider.send"]
    assert send.attributes is not None and send.attributes["pushsvc.outcome"] == "delivered"
    assert token(1) not in str(dict(send.attributes)) and str(send.attributes["pushsvc.token"]).startswith("000000")
    # The stored context is the intake span's, with the producer's tracestate; the hash is of the body alone.
    assert doc["trace"] == {"traceparent": f"00-{trace_id}-{span_id(intake)}-01", "tracestate": "vendor=1"}
    assert doc["request_hash"] == request_hash(body)

    (event,) = await consume(stack.bootstrap, stack.kafka["outcomes_topic"], 1)
    assert header(event, "traceparent") == f"00-{trace_id}-{span_id(publish_span)}-01"
    assert header(event, "tracestate") == "vendor=1"


async def test_a_fanout_sends_one_span_per_chunk_with_counts_never_one_per_device(
    stack: Stack, spans: InMemorySpanExporter
) -> None:
    await stack.start(dispatch={"chunk_size": 2})
    for n in range(5):
        await stack.register(token(10 + n), "ios", tags=["beta"])
    traceparent, trace_id, producer_span = producer_context()
    await publish(stack, alert("traced-fanout", {"segment": {"tags_any": ["beta"]}}),
                  [("traceparent", traceparent.encode())])
    doc = await stack.wait_finished("traced-fanout")
    assert doc["state"] == "done" and doc["counts"]["delivered"] == 5, doc

    found = await trace_of(spans, trace_id, ["intake.record", *AFTER_CLAIM])
    assert_tree(found, producer_span)
    # Claimed by the scheduler (the fan-out lane is never dispatched at intake).
    (claim,) = found["schedule.claim"]
    assert claim.attributes is not None and claim.attributes["pushsvc.claim.direct"] is False
    sends = found["provider.send"]
    # 5 devices in chunks of 2: three chunk spans, counting them all.
    assert len(sends) == 3, [s.attributes for s in sends]
    assert sum(int((s.attributes or {})["pushsvc.count.delivered"]) for s in sends) == 5
    assert sorted(int((s.attributes or {})["pushsvc.chunk.devices"]) for s in sends) == [1, 2, 2]
    assert len(found["audience.lookup"]) == 3


async def test_a_dead_letter_carries_the_trace_of_its_intake_span(stack: Stack, spans: InMemorySpanExporter) -> None:
    await stack.start()
    traceparent, trace_id, producer_span = producer_context()
    await publish(stack, b'{"id": "bad", "app": "demo"}', [("traceparent", traceparent.encode())])
    (letter,) = await consume(stack.bootstrap, stack.kafka["dlq_topic"], 1)
    found = await trace_of(spans, trace_id, ["intake.record"])
    (intake,) = found["intake.record"]
    assert parent_of(intake) == producer_span
    assert intake.attributes is not None and intake.attributes["pushsvc.dlq.reason"] == "invalid_request"
    # The producer's header is replaced by the intake span's context, not repeated.
    assert header(letter, "traceparent") == f"00-{trace_id}-{span_id(intake)}-01"
    assert header(letter, "pushsvc-dlq-reason") == "invalid_request"


async def test_an_http_request_with_traceparent_is_traced_like_a_kafka_record(
    stack: Stack, spans: InMemorySpanExporter
) -> None:
    await stack.start()
    await stack.register(token(2), "ios", user_id="u2")
    traceparent, trace_id, caller_span = producer_context()
    async with stack.http.post(stack.url("/v1/notifications"), json=alert("traced-http", {"users": ["u2"]}),
                               headers={**auth_headers(), "traceparent": traceparent}) as response:
        assert response.status == 201, await response.text()
    doc = await stack.wait_finished("traced-http")
    assert doc["counts"]["delivered"] == 1, doc
    found = await trace_of(spans, trace_id, ["intake.record", *AFTER_CLAIM])
    publish_span = assert_tree(found, caller_span)
    (intake,) = found["intake.record"]
    assert intake.kind is SpanKind.SERVER and (intake.attributes or {})["http.response.status_code"] == 201
    (event,) = await consume(stack.bootstrap, stack.kafka["outcomes_topic"], 1)
    assert header(event, "traceparent") == f"00-{trace_id}-{span_id(publish_span)}-01"


async def test_a_campaign_created_with_traceparent_is_traced_to_its_outcome_event(
    stack: Stack, spans: InMemorySpanExporter
) -> None:
    await stack.start()
    for n in range(3):
        await stack.register(token(20 + n), "ios", tags=["promo"])
    traceparent, trace_id, caller_span = producer_context()
    body = {"id": "spring", "name": "Spring", "app": "demo", "audience": {"segment": {"tags_any": ["promo"]}},
            "message": {"title": "Sale", "body": "b"}}
    async with stack.http.post(stack.url("/v1/campaigns"), json=body,
                               headers={**auth_headers(), "traceparent": traceparent}) as response:
        assert response.status == 201, await response.text()
    doc = await stack.wait_finished("campaign:spring")
    assert doc["counts"]["delivered"] == 3, doc
    found = await trace_of(spans, trace_id, ["intake.record", *AFTER_CLAIM])
    assert_tree(found, caller_span)
    assert sum(int((s.attributes or {})["pushsvc.count.delivered"]) for s in found["provider.send"]) == 3


async def test_without_traceparent_the_intake_span_is_a_new_root_and_the_push_joins_its_trace(
    stack: Stack, spans: InMemorySpanExporter
) -> None:
    await stack.start()
    await stack.register(token(3), "ios", user_id="u3")
    await publish(stack, alert("untraced", {"users": ["u3"]}))
    doc = await stack.wait_finished("untraced")
    trace_id = doc["trace"]["traceparent"][3:35]
    found = await trace_of(spans, trace_id, ["intake.record", *AFTER_CLAIM])
    assert_tree(found, None)
    (event,) = await consume(stack.bootstrap, stack.kafka["outcomes_topic"], 1)
    assert (header(event, "traceparent") or "")[3:35] == trace_id


async def test_with_tracing_off_the_producers_context_is_passed_on_unchanged(stack: Stack) -> None:
    assert not tracing.enabled()
    await stack.start()
    await stack.register(token(4), "ios", user_id="u4")
    traceparent, _, _ = producer_context()
    await publish(stack, alert("passed-on", {"users": ["u4"]}), [("traceparent", traceparent.encode())])
    await publish(stack, b"not json", [("traceparent", traceparent.encode())])
    doc = await stack.wait_finished("passed-on")
    assert doc["trace"] == {"traceparent": traceparent}
    (event,) = await consume(stack.bootstrap, stack.kafka["outcomes_topic"], 1)
    assert header(event, "traceparent") == traceparent
    (letter,) = await consume(stack.bootstrap, stack.kafka["dlq_topic"], 1)
    assert header(letter, "traceparent") == traceparent


async def test_a_repeat_with_another_traceparent_is_the_same_request_and_keeps_the_first_trace(
    stack: Stack, spans: InMemorySpanExporter
) -> None:
    """The trace context is not part of the request: a redelivery traced anew is absorbed, not a conflict."""
    await stack.start()
    await stack.register(token(7), "ios", user_id="u7")
    first, trace_id, _ = producer_context()
    second, _, _ = producer_context()
    body = alert("repeated", {"users": ["u7"]})
    await publish(stack, body, [("traceparent", first.encode())])
    doc = await stack.wait_finished("repeated")
    # One key, one partition: once "after" is done, the repeat before it was handled.
    await publish(stack, body, [("traceparent", second.encode())], key=b"same")
    await publish(stack, alert("after", {"users": ["u7"]}), key=b"same")
    await stack.wait_finished("after")
    again = await stack.notification("repeated")
    assert again is not None and again["trace"] == doc["trace"] and again["trace"]["traceparent"][3:35] == trace_id
    assert again["counts"]["delivered"] == 1 and len(stack.apns.requests) == 2
    assert await stack.db.notifications.count_documents({}) == 2
    with pytest.raises(AssertionError):  # no dead letter (a conflict would be one)
        await consume(stack.bootstrap, stack.kafka["dlq_topic"], 1, timeout=2)


async def test_a_push_its_producer_did_not_sample_records_no_span_and_passes_the_context_on(
    stack: Stack, spans: InMemorySpanExporter
) -> None:
    """Under a parent that is not sampled nothing is recorded (the SDK is not even asked: the 99% of pushes at
    the default 1%), and the producer's context goes on as it came."""
    await stack.start()
    await stack.register(token(6), "ios", user_id="u6")
    traceparent, trace_id, _ = producer_context()
    unsampled = traceparent[:-2] + "00"
    await publish(stack, alert("unsampled", {"users": ["u6"]}), [("traceparent", unsampled.encode())])
    doc = await stack.wait_finished("unsampled")
    assert doc["counts"]["delivered"] == 1 and doc["trace"] == {"traceparent": unsampled}, doc
    (event,) = await consume(stack.bootstrap, stack.kafka["outcomes_topic"], 1)
    assert header(event, "traceparent") == unsampled
    assert in_trace(spans, trace_id) == {}


async def test_pushsvc_send_trace_publishes_a_sampled_push_and_prints_its_trace_id(
    stack: Stack, spans: InMemorySpanExporter
) -> None:
    """The operator's way to trace one push whatever the sample ratio (docs/runbook.md)."""
    await stack.start()
    await stack.register(token(8), "ios", user_id="u8")
    config = stack.tmp_path / "config-0.yaml"  # written by the service's start
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pushsvc.cli", "send", "--config", str(config), "--app", "demo", "--user", "u8",
        "--id", "sent-traced", "--trace", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    printed = orjson.loads(out)
    trace_id = printed["trace_id"]
    assert printed["published"] == "sent-traced" and len(trace_id) == 32
    await stack.wait_finished("sent-traced")
    found = await trace_of(spans, trace_id, ["intake.record", *AFTER_CLAIM])
    (intake,) = found["intake.record"]
    assert intake.parent is not None and intake.parent.is_remote  # under the CLI's (unrecorded) span


class OtlpReceiver:
    """A collector's OTLP/HTTP traces endpoint: POST /v1/traces, an ExportTraceServiceRequest in protobuf."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.tls = tls
        self.requests: list[ExportTraceServiceRequest] = []
        self.content_types: list[str] = []
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def _traces(self, request: web.Request) -> web.Response:
        self.content_types.append(request.content_type)
        decoded = ExportTraceServiceRequest()
        decoded.ParseFromString(await request.read())
        self.requests.append(decoded)
        return web.Response(body=b"", content_type="application/x-protobuf")

    async def __aenter__(self) -> OtlpReceiver:
        app = web.Application()
        app.router.add_post("/v1/traces", self._traces)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self.tls)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    def spans(self) -> Iterator[tuple[dict[str, Any], Any]]:
        """(resource attributes, span) for every span received."""
        for request in self.requests:
            for resource_spans in request.resource_spans:
                resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        yield resource, span


@pytest.fixture(params=["https", "http"])
async def receiver(request: pytest.FixtureRequest, stack: Stack) -> AsyncIterator[OtlpReceiver]:
    """A collector over TLS (its certificate from the test CA, trusted through tracing.ca_file), or plain http
    on the loopback (a sidecar collector: the one place http:// is accepted)."""
    async with OtlpReceiver(stack.pki.server_context() if request.param == "https" else None) as peer:
        yield peer


async def test_spans_reach_a_collector_over_otlp_http_as_configured(stack: Stack, receiver: OtlpReceiver) -> None:
    # The sample ratio does not apply to a sampled parent.
    scheme = "https" if receiver.tls is not None else "http"
    tracing_config = {"otlp_endpoint": f"{scheme}://127.0.0.1:{receiver.port}", "sample_ratio": 0.0,
                      "service_name": "pushsvc-test", "ca_file": str(stack.pki.ca_file)}
    service = await stack.start(extra={"tracing": tracing_config})
    assert tracing.enabled()
    await stack.register(token(5), "ios", user_id="u5")
    traceparent, trace_id, producer_span = producer_context()
    await publish(stack, alert("exported", {"users": ["u5"]}), [("traceparent", traceparent.encode())])
    await stack.wait_finished("exported")
    await asyncio.sleep(0.2)  # the outcome event's span ends once the broker acknowledged it
    await stack.stop(service)  # flushes the export queue
    assert not tracing.enabled()

    received = [(resource, span) for resource, span in receiver.spans() if span.trace_id.hex() == trace_id]
    names = {span.name for _, span in received}
    assert names >= {"intake.record", *AFTER_CLAIM}, names
    assert {resource["service.name"] for resource, _ in received} == {"pushsvc-test"}
    (intake,) = [span for _, span in received if span.name == "intake.record"]
    assert intake.parent_span_id.hex() == producer_span
    assert set(receiver.content_types) == {"application/x-protobuf"}
