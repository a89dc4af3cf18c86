"""What tracing costs per delivery: CPU microseconds, tracing off vs on at 1% and 100% sampling.

`python benchmarks/tracing_cost.py [--deliveries 2000] [--rounds 7]` runs the code the service runs for one
push, with its tracing calls, as the instrumented path makes them (pushsvc/tracing.py, dispatch/traces.py,
ingest/kafka.py, outcomes.py), with no broker or database around it: their CPU is the same whatever tracing
does, and on this 2-core box their spread (+-15%) would hide the difference. Two paths:

* `batch`: one push to one device (the batch lane, the most spans per delivery: intake, claim, dispatch,
  lookup, one send, finish, outcome event = 7, and the stored context written and read back);
* `fanout`: one chunk of 500 devices of a fan-out (a lookup span and one send span per chunk, counts as
  attributes), per delivery.

Modes: `none` (the same work without any tracing call: the baseline), `off` (tracing off: the no-op fast
paths, what a replica pays by default), `on-1%` and `on-100%` (an SDK provider sampling new roots at that
ratio, a BatchSpanProcessor and the real OTLP/HTTP exporter posting protobuf to a receiver in another
process, so that encoding and sending are counted and the receiver's decoding is not). The requests carry no
`traceparent`: every push is a new root, sampled at the ratio. Rounds interleave the modes in a shuffled
order; each measure ends with a flush of the exporter (its thread's CPU is this process's). Prints the median
and the range over rounds of the CPU per delivery above `none`. Nothing here is pass/fail.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from aiokafka import ConsumerRecord  # noqa: E402
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor  # noqa: E402

from pushsvc import tracing  # noqa: E402
from pushsvc.config import TracingSettings  # noqa: E402
from pushsvc.dispatch import traces  # noqa: E402
from pushsvc.dispatch.sender import FinalResult  # noqa: E402
from pushsvc.ingest import kafka  # noqa: E402
from pushsvc.ingest.intake import Accepted, validate  # noqa: E402
from pushsvc.model import Recipient  # noqa: E402
from pushsvc.outcomes import OutcomeEvent, OutcomePublisher, _headers  # noqa: E402
from pushsvc.providers.base import Delivery  # noqa: E402
from pushsvc.store.records import NotificationRecord  # noqa: E402
from pushsvc.tracing import TRACE_FIELD, TraceContext  # noqa: E402

CHUNK = 500
MODES = ("none", "off", "on-1%", "on-100%")


def receiver_main(port: int) -> None:
    """A collector's OTLP/HTTP endpoint in its own process: decodes and counts the spans it is sent."""
    from aiohttp import web
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    count = 0

    async def traces_(request: web.Request) -> web.Response:
        nonlocal count
        decoded = ExportTraceServiceRequest()
        decoded.ParseFromString(await request.read())
        count += sum(len(s.spans) for r in decoded.resource_spans for s in r.scope_spans)
        return web.Response(body=b"", content_type="application/x-protobuf")

    async def counted(_: web.Request) -> web.Response:
        return web.Response(text=str(count))

    app = web.Application()
    app.router.add_post("/v1/traces", traces_)
    app.router.add_get("/count", counted)
    web.run_app(app, host="127.0.0.1", port=port, print=None)


class Ended(SpanProcessor):
    """Counts the spans ended (recorded), to compare with those the receiver got."""

    def __init__(self) -> None:
        self.count = 0

    def on_end(self, span: ReadableSpan) -> None:
        self.count += 1


class Fixture:
    """One push's inputs, built once: what the service has in hand at each step."""

    def __init__(self) -> None:
        body = {"id": "r1", "app": "demo", "target": {"users": ["u1"]}, "message": {"title": "t", "body": "b"}}
        accepted = validate(body, frozenset({"demo"}))
        assert isinstance(accepted, Accepted)
        self.accepted = accepted
        value = b"{}"
        self.record = ConsumerRecord("push.requests", 0, 1, 0, 0, b"demo:r1", value, None, 0, len(value), [])
        self.notification = NotificationRecord("demo:r1", "demo", "r1", "dispatching", accepted.request, lane="batch")
        self.recipient = Recipient("demo", "ab" * 32, "ios", kind="apns")
        self.delivery = Delivery("r1", self.recipient, accepted.request.message, accepted.request.options)
        self.result = FinalResult(self.delivery, "delivered", "", 1)
        self.chunk = type("Chunk", (), {"devices": [{}] * CHUNK, "unknown_tokens": [], "exhausted": False})()
        self.publisher = OutcomePublisher(None, "push.outcomes")

    async def send(self, delivery: Delivery, *args: Any, **kwargs: Any) -> FinalResult:
        return self.result


async def batch_push(f: Fixture, traced: bool) -> None:
    """One push to one device, Kafka to outcome event, as the batch lane runs it."""
    if traced:
        span, context = kafka._intake_span(f.record)
        item = replace(f.accepted, trace=context)
        kafka._describe(span, item)
        stored = {TRACE_FIELD: item.trace.document()} if item.trace is not None else {}
        span.end()
        record = replace(f.notification, trace=TraceContext.of_mapping(stored.get(TRACE_FIELD)))
        traces.claimed([record], "batch", "bench", time.time_ns(), direct=True)
        dispatch = traces.dispatching(record, "batch")
        traces.looked_up([dispatch], time.time_ns(), [f.chunk])
        send = traces.per_device(f.send)
        await tracing.within(dispatch, send(f.delivery, 0.0, None, lane="batch", pace=None))
        dispatch.end()
        (finish,) = traces.finish_spans([record], "done")
        tracing.counted(finish, {"delivered": 1, "targeted": 1})
        event = OutcomeEvent.of(record, "done", {"delivered": 1}, None, 0.0, trace=tracing.carried(finish))
        publish = f.publisher._span(event)
        _headers(tracing.carried(publish) or event.trace)
        publish.end()
        finish.end()
    else:
        item = replace(f.accepted, trace=None)
        record = replace(f.notification, trace=None)
        await f.send(f.delivery, 0.0, None, lane="batch", pace=None)
        event = OutcomeEvent(record.id, record.request_id, record.app, "done", {"delivered": 1}, None, 0.0)
        del item, event


async def fanout_chunk(f: Fixture, traced: bool) -> None:
    """One chunk of a fan-out, its tracing calls: the lookup and the chunk's send span (its sends not traced)."""
    counts = Counter({"delivered": CHUNK, "targeted": CHUNK})
    if traced:
        with traces.lookup("demo:r1") as span:
            traces.chunk_read(span, f.chunk)
        with traces.chunk_send(f.notification, CHUNK) as span:
            traces.sent(span, counts)


def measure(f: Fixture, path: str, deliveries: int, mode: str, provider: Any) -> float:
    """CPU microseconds per delivery of `deliveries` on `path` in `mode` (the exporter flushed inside)."""
    tracing.install(provider)
    loop = asyncio.new_event_loop()
    traced = mode != "none"
    try:
        started = time.process_time()
        if path == "batch":
            for _ in range(deliveries):
                loop.run_until_complete(batch_push(f, traced))
        else:
            dispatch = traces.dispatching(f.notification) if traced else None

            async def chunks() -> None:
                for _ in range(max(1, deliveries // CHUNK)):
                    await fanout_chunk(f, traced)

            loop.run_until_complete(tracing.within(dispatch, chunks()) if dispatch is not None else chunks())
            if dispatch is not None:
                dispatch.end()
        if provider is not None:
            provider.force_flush()
        elapsed = time.process_time() - started
    finally:
        loop.close()
        tracing.install(None)
    sent = deliveries if path == "batch" else max(1, deliveries // CHUNK) * CHUNK
    return elapsed / sent * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--deliveries", type=int, default=2000, help="per measure (batch: pushes)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--serve-receiver", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_receiver:
        receiver_main(args.serve_receiver)
        return 0
    from pushsvc.dev.servers import free_port, wait_for_port

    port = free_port()
    receiver = subprocess.Popen([sys.executable, __file__, "--serve-receiver", str(port)])
    try:
        wait_for_port(port, 10, receiver)
        endpoint = f"http://127.0.0.1:{port}"
        providers: dict[str, Any] = {"none": None, "off": None}
        ended = Ended()
        for mode, ratio in (("on-1%", 0.01), ("on-100%", 1.0)):
            provider = tracing.configure(TracingSettings(otlp_endpoint=endpoint, sample_ratio=ratio))
            assert provider is not None
            provider.add_span_processor(ended)
            providers[mode] = provider
            tracing.install(None)  # installed per measure
        fixture = Fixture()
        results: dict[tuple[str, str], list[float]] = {}
        for path in ("batch", "fanout"):
            for mode in MODES:  # warm-up: imports, first-call caches, the exporter's connection
                measure(fixture, path, 200 if path == "batch" else CHUNK, mode, providers[mode])
        for _ in range(args.rounds):
            for path in ("batch", "fanout"):
                deliveries = args.deliveries if path == "batch" else args.deliveries * 25
                for mode in random.sample(MODES, len(MODES)):
                    results.setdefault((path, mode), []).append(
                        measure(fixture, path, deliveries, mode, providers[mode])
                    )
        with urllib.request.urlopen(f"{endpoint}/count", timeout=5) as answer:
            exported = int(answer.read())
        for provider in providers.values():
            if provider is not None:
                provider.shutdown()
    finally:
        receiver.terminate()
        receiver.wait(10)
    print(f"tracing CPU per delivery, us above `none` (median [min-max] over {args.rounds} interleaved rounds)")
    print(f"{'path':8} {'mode':9} {'total us':>9} {'tracing us':>22}")
    for path in ("batch", "fanout"):
        base = results[(path, "none")]
        for mode in MODES:
            runs = results[(path, mode)]
            extra = [run - b for run, b in zip(runs, base, strict=True)]
            spread = f"{statistics.median(extra):7.2f} [{min(extra):.2f}-{max(extra):.2f}]"
            print(f"{path:8} {mode:9} {statistics.median(runs):9.2f} {spread:>22}")
    # The BatchSpanProcessor drops spans when its queue (2,048) is full: this loop makes them faster than any
    # replica would, so a few may be dropped at 100%, and their export is then not counted above.
    print(f"spans ended: {ended.count}, received by the OTLP receiver: {exported}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
