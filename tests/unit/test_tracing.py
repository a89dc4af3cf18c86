"""Tracing's settings, the W3C context pushsvc reads and carries, and what tracing off costs: nothing loaded."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from aiokafka import ConsumerRecord
from opentelemetry.trace import INVALID_SPAN

from pushsvc import tracing
from pushsvc.config import ConfigError, TracingSettings
from pushsvc.dispatch import traces
from pushsvc.ingest.intake import Rejection
from pushsvc.ingest.kafka import DLQ_MAX_HEADER_BYTES, dead_letter
from pushsvc.tracing import TraceContext
from tests.unit.test_config import base, files, load

__all__ = ["files"]  # the fixture, shared with test_config

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_tracing_is_off_by_default_and_set_from_the_file_or_the_environment(files: dict[str, Path]) -> None:
    assert load(files, base(files)).tracing == TracingSettings(otlp_endpoint=None, sample_ratio=0.01)
    env = {"PUSHSVC_TRACING__OTLP_ENDPOINT": "https://collector:4318", "PUSHSVC_TRACING__SAMPLE_RATIO": "0.5"}
    settings = load(files, base(files), env)
    assert settings.tracing.otlp_endpoint == "https://collector:4318" and settings.tracing.sample_ratio == 0.5
    local = load(files, {**base(files), "tracing": {"otlp_endpoint": "http://localhost:4318/v1/traces"}})
    assert local.tracing.otlp_endpoint == "http://localhost:4318/v1/traces"


@pytest.mark.parametrize(
    ("tracing_config", "message"),
    [
        ({"otlp_endpoint": "http://collector:4318"}, "tracing.otlp_endpoint: http:// is allowed only to"),
        ({"otlp_endpoint": "http://10.0.0.5:4318"}, "use https:// (TLS is never off)"),
        ({"otlp_endpoint": "ftp://collector"}, "tracing.otlp_endpoint: expected https://host"),
        ({"otlp_endpoint": "https://user:pw@collector"}, "tracing.otlp_endpoint: must not hold credentials"),
        ({"sample_ratio": 1.5}, "tracing.sample_ratio: must be between 0 and 1"),
        ({"ca_file": "/nope.pem"}, "tracing.ca_file: file not found"),
    ],
)
def test_tracing_settings_errors_name_the_key(files: dict[str, Path], tracing_config: dict, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load(files, {**base(files), "tracing": tracing_config})
    assert message in str(raised.value)


def test_the_traces_url_is_the_setting_or_its_otlp_path() -> None:
    assert tracing.traces_url("https://collector:4318") == "https://collector:4318/v1/traces"
    assert tracing.traces_url("https://collector:4318/") == "https://collector:4318/v1/traces"
    assert tracing.traces_url("https://collector/custom/traces") == "https://collector/custom/traces"


@pytest.mark.parametrize(
    "value",
    [
        "", "garbage", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",  # no flags
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",  # all-zero trace id
        "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",  # all-zero span id
        "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",  # version ff
        "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",  # upper case
    ],
)
def test_a_malformed_traceparent_is_dropped(value: str) -> None:
    assert TraceContext.of(value) is None
    assert TraceContext.of_headers([("traceparent", value.encode())]) is None


def test_headers_give_the_first_context_and_a_long_tracestate_is_dropped() -> None:
    other = "00-1af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    context = TraceContext.of_headers([("Traceparent", PARENT.encode()), ("traceparent", other.encode()),
                                       ("tracestate", b"a=1")])
    assert context == TraceContext(PARENT, "a=1")
    assert TraceContext.of(PARENT, "a=" + "x" * 600) == TraceContext(PARENT)
    assert TraceContext.of_mapping({"traceparent": PARENT}) == TraceContext(PARENT)
    assert TraceContext.of_mapping(None) is None and TraceContext.of_mapping({"traceparent": 7}) is None


def record(headers: list[tuple[str, bytes]]) -> ConsumerRecord:
    value = b'{"id": "r1"}'
    return ConsumerRecord("push.requests", 2, 41, 1764000000000, 0, b"k", value, None, 0, len(value), headers)


def test_a_dead_letter_carries_its_intake_context_in_place_of_the_producers() -> None:
    ours = TraceContext("00-0af7651916cd43dd8448eb211c80319c-1111111111111111-01")
    letter = dead_letter(record([("traceparent", PARENT.encode()), ("x", b"1")]), Rejection("invalid_json", "x"),
                         1_000_000, ours)
    assert letter.headers == [("x", b"1"), ("traceparent", ours.traceparent.encode()),
                              ("pushsvc-dlq-reason", b"invalid_json")]
    # Headers too large to keep are dropped, the trace context is not.
    huge = record([("traceparent", PARENT.encode()), ("big", b"x" * DLQ_MAX_HEADER_BYTES)])
    letter = dead_letter(huge, Rejection("invalid_json", "x"), 1_000_000, ours)
    assert [name for name, _ in letter.headers] == ["traceparent", "pushsvc-dlq-reason"]
    # No context (a malformed header, tracing off): the headers stay as they came.
    bad = [("traceparent", b"garbage"), ("x", b"1")]
    assert dead_letter(record(bad), Rejection("invalid_json", "x"), 1_000_000).headers[:2] == bad


def test_off_no_span_is_made_and_the_sender_is_not_wrapped() -> None:
    assert not tracing.enabled()
    assert tracing.start("x", TraceContext(PARENT)) is INVALID_SPAN
    with tracing.span("x", None) as span:
        assert span is INVALID_SPAN
    assert tracing.current() is None

    async def send() -> None: ...

    assert traces.per_device(send) is send


def test_off_the_sdk_is_never_imported() -> None:
    """The service and every module it runs, imported and a (disabled) tracing configured: no SDK loaded."""
    code = (
        "import sys; import pushsvc.service, pushsvc.cli; from pushsvc import tracing; "
        "from pushsvc.config import TracingSettings; assert tracing.configure(TracingSettings()) is None; "
        "loaded = sorted(m for m in sys.modules if m.startswith('opentelemetry.sdk')); print(loaded); "
        "sys.exit(1 if loaded else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False,
                            cwd=Path(__file__).parents[2])
    assert result.returncode == 0, result.stdout + result.stderr
